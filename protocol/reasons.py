"""Reason codes of gate decisions, each with a human message in zh-CN and en.

A reason code is a stable, machine-readable contract: operators' scripts,
reports and alert rules match on it. Add codes; never rename or drop one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    zh: str
    en: str

    def as_dict(self) -> dict[str, str]:
        return {"zh": self.zh, "en": self.en}


MESSAGES: dict[str, Message] = {
    "ok": Message("请通行", "Please pass"),
    "malformed": Message(
        "无法识别的通行码，请出示有效通行证", "Unrecognised code: show a valid pass"
    ),
    "bad_signature": Message(
        "通行证无效（签名不符），请联系门卫", "Invalid pass (signature mismatch): see the guard"
    ),
    "unknown_key": Message(
        "通行证非本小区签发，请联系门卫", "Pass signed by an unknown key: see the guard"
    ),
    "wrong_site": Message("该通行证不属于本小区", "This pass is for another site"),
    "not_yet_valid": Message("通行证尚未生效", "Pass is not valid yet"),
    "expired": Message(
        "通行证已过期，请到居委会换证", "Pass expired: renew it at the community office"
    ),
    "revoked": Message("通行证已注销，请联系居委会", "Pass revoked: contact the community office"),
    "fever": Message("体温异常，请前往发热门诊", "High temperature: please go to the fever clinic"),
    "fever_recheck": Message("体温偏高，请稍候重新测温", "Temperature high: please measure again"),
    "no_temperature": Message(
        "未能测得体温，请门卫人工核验", "No temperature reading: the guard will check you"
    ),
    "fever_soft": Message(
        "体温异常，已通知社区，请居家观察", "High temperature: let in, the community is informed"
    ),
    "quarantined": Message("居家隔离期间不能外出", "Home quarantine: no going out"),
    "anti_passback": Message("您已出门，请先入内再出", "Already out: come back in first"),
    "outside_window": Message("不在允许外出时段", "Outside the permitted outing hours"),
    "household_out_limit": Message(
        "同户已有人外出，请等其返回", "A member of your household is already out"
    ),
    "daily_exit_limit": Message(
        "本户今日外出次数已用完", "Your household's exits for today are used"
    ),
    "visitor_used": Message(
        "访客证已使用，请到门卫登记", "Visitor pass already used: see the guard"
    ),
    "bad_input": Message("输入无法解析", "Input could not be read"),
    "no_qr": Message("未识别到二维码", "No QR code found"),
    "multiple_codes": Message("请一次只出示一张通行证", "Show one pass at a time"),
    "unreadable_image": Message("图像无法读取", "Image could not be read"),
    "measure_temperature": Message("请测温", "Please measure your temperature"),
    "guard_confirm": Message("请门卫人工核验", "The guard will confirm this passage"),
    "exit_request": Message("出门按钮开门", "Opened by the exit button"),
    "guard_override": Message("门卫人工放行", "Opened by the guard"),
    "guard_locked": Message(
        "门卫页面 PIN 多次错误，人工放行已锁定", "Guard page: too many wrong PINs, overrides locked"
    ),
    "camera_lost": Message("摄像头故障", "Camera lost"),
    "camera_ok": Message("摄像头已恢复", "Camera back"),
    "clock_jump": Message("系统时间跳变", "The wall clock jumped"),
    "door_forced": Message("门被强行打开", "Door opened without a grant"),
    "door_held_open": Message("门长时间未关", "Door held open"),
    "gate_reset": Message(
        "闸机数据库已更换，序号重新开始", "Gate database replaced: numbering restarted"
    ),
    "gate_history_lost": Message(
        "闸机丢失了已提交的记录，已改用新编号", "Gate lost committed records: numbering moved on"
    ),
    "document_too_large": Message(
        "名册或配置过大，无法下发到门岗", "Register or config too large to send to the gates"
    ),
    "untrusted_document": Message(
        "闸机拒收了不可信的签名文件（密钥已停用或伪造）",
        "A gate refused an untrusted signed document (retired key or forgery)",
    ),
    "document_withdrawn": Message(
        "停用密钥签署的文件已失效，等待服务器的新文件",
        "Documents of a retired key stopped applying: the server's replacements follow",
    ),
    "foreign_document": Message(
        "消息服务器上有非本服务器发布的文件，已重新发布",
        "A document on the broker was not published by this server: replaced",
    ),
    "storage_fault": Message("系统存储故障，请联系门卫", "Storage fault: please ask the guard"),
    "storage_ok": Message("闸机存储已恢复", "Gate storage works again"),
    "database_recovered": Message(
        "闸机数据库已损坏并重建，序号重新开始", "Gate database was damaged and rebuilt: a new epoch"
    ),
}

ALLOW_REASONS = frozenset({"ok", "fever_soft", "exit_request", "guard_override"})


def message(reason: str) -> Message:
    """The human message for a reason code (a neutral one for codes this version does not know)."""
    return MESSAGES.get(reason, Message(f"拒绝（{reason}）", f"Refused ({reason})"))
