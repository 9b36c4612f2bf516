"""The dashboard's words in zh-CN (the default) and en.

Every string a page shows comes from here (reason messages come from
protocol/reasons.py). A key missing from the table is a bug the tests catch:
`text` raises KeyError rather than showing a key to an operator.
"""

from __future__ import annotations

from protocol.reasons import message

LANGS = ("zh", "en")
DEFAULT = "zh"
HTML_LANG = {"zh": "zh-CN", "en": "en"}

STRINGS: dict[str, tuple[str, str]] = {
    "app": ("门卫 · 社区出入管理", "Menwei · compound gates"),
    "nav.overview": ("总览", "Overview"),
    "nav.feed": ("实时通行", "Live feed"),
    "nav.alerts": ("告警", "Alerts"),
    "nav.households": ("住户", "Households"),
    "nav.charts": ("图表", "Charts"),
    "nav.reports": ("报表", "Reports"),
    "nav.audit": ("审计日志", "Audit log"),
    "nav.visitors": ("访客登记", "Visitors"),
    "lang.switch": ("English", "中文"),
    "logout": ("退出", "Log out"),
    "login.title": ("操作员登录", "Operator login"),
    "login.name": ("账号", "Account"),
    "login.password": ("密码", "Password"),
    "login.submit": ("登录", "Log in"),
    "login.failed": ("账号或密码错误", "Wrong account or password"),
    "login.limited": (
        "登录失败次数过多，请 15 分钟后再试",
        "Too many failed logins: try again in 15 minutes",
    ),
    "login.expired": ("会话已过期，请重新登录", "Your session expired: please log in again"),
    "role.viewer": ("只读", "viewer"),
    "role.operator": ("操作员", "operator"),
    "role.admin": ("管理员", "admin"),
    "error.forbidden": ("您的账号无权执行此操作", "Your account may not do this"),
    "error.csrf": (
        "表单已失效，请刷新页面后重试",
        "This form has expired: reload the page and try again",
    ),
    "error.not_found": ("未找到", "Not found"),
    "error.bad_request": ("请求无效", "Bad request"),
    "back": ("返回", "Back"),
    "gates": ("闸机", "Gates"),
    "gate": ("闸机", "Gate"),
    "gate.online": ("在线", "online"),
    "gate.offline": ("离线", "offline"),
    "gate.silent": ("失联", "not heard from"),
    "gate.unknown": ("未知", "unknown"),
    "gate.last_seen": ("最后联系", "Last seen"),
    "gate.backlog": ("待上传", "Backlog"),
    "gate.clock": ("时钟", "Clock"),
    "gate.clock_trusted": ("已同步", "trusted"),
    "gate.clock_untrusted": ("未同步", "not trusted"),
    "gate.versions": ("配置/名册版本", "Config/register"),
    "gate.data_age": ("数据时效", "Data age"),
    "gate.data_age_help": (
        "距闸机上次收到服务器签名确认（配置与名册为最新）的时间；超过上限时由门卫确认放行",
        "Time since the gate last had the server's signed word that its policy and register"
        " are current; past the limit the guard confirms every passage",
    ),
    "gate.hours": ("小时", "h"),
    "gate.camera": ("摄像头", "Camera"),
    "gate.direction": ("方向", "Direction"),
    "camera.ok": ("正常", "ok"),
    "camera.recovering": ("等待画面", "waiting for frames"),
    "camera.lost": ("故障", "lost"),
    "gate.none": (
        "还没有闸机连接过采集服务",
        "No gate has reached the collector yet",
    ),
    "today": ("今日", "Today"),
    "today.in": ("今日进入", "In today"),
    "today.out": ("今日外出", "Out today"),
    "outside_now": ("当前在外人数", "Outside now"),
    "denials": ("拒绝（按原因）", "Denials by reason"),
    "denials.none": ("今日无拒绝", "No denials today"),
    "alerts.open": ("未处理告警", "Open alerts"),
    "alerts.none": ("没有告警", "No alerts"),
    "alerts.kind": ("类型", "Kind"),
    "alerts.priority": ("优先级", "Priority"),
    "alerts.high": ("高", "high"),
    "alerts.normal": ("普通", "normal"),
    "alerts.detail": ("详情", "Detail"),
    "alerts.ack": ("确认", "Acknowledge"),
    "alerts.note": ("处理说明", "Note"),
    "alerts.acked": ("已确认", "Acknowledged"),
    "alerts.acked_by": ("确认人", "by"),
    "alerts.show_all": ("显示全部", "Show all"),
    "alerts.show_open": ("只看未处理", "Open only"),
    "alert.fever": ("发热", "Fever"),
    "alert.forged": ("伪造通行证", "Forged pass"),
    "alert.bad_signature": ("伪造通行证", "Forged pass"),
    "alert.unknown_key": ("未知签发密钥", "Unknown signing key"),
    "alert.revoked": ("已注销通行证被使用", "Revoked pass used"),
    "alert.conflict": ("跨闸机冲突", "Cross-gate conflict"),
    "alert.gate_offline": ("闸机离线", "Gate offline"),
    "alert.door_forced": ("门被强行打开", "Door forced"),
    "alert.door_held_open": ("门长时间未关", "Door held open"),
    "alert.camera_lost": ("摄像头故障", "Camera lost"),
    "alert.fever_soft": ("体温异常（放行）", "High temperature (let in)"),
    "time": ("时间", "Time"),
    "decision": ("结果", "Decision"),
    "decision.any": ("全部结果", "All decisions"),
    "decision.allow": ("放行", "allowed"),
    "decision.deny": ("拒绝", "denied"),
    "direction.in": ("进", "in"),
    "direction.out": ("出", "out"),
    "direction.both": ("双向", "both"),
    "gate.any": ("全部闸机", "All gates"),
    "filter": ("筛选", "Filter"),
    "feed.live": ("实时", "live"),
    "feed.connecting": ("连接中…", "connecting…"),
    "feed.disconnected": ("连接中断，正在重连…", "disconnected, reconnecting…"),
    "feed.empty": ("暂无通行记录", "No passages yet"),
    "feed.dropped": ("页面处理过慢，已跳过若干条", "This page fell behind: some rows were skipped"),
    "holder": ("持证人", "Holder"),
    "household": ("户", "Household"),
    "reason": ("原因", "Reason"),
    "temperature": ("体温", "Temperature"),
    "households.search": ("按房号或姓名搜索", "Search by room or name"),
    "households.search_button": ("搜索", "Search"),
    "households.none": ("没有匹配的住户", "No matching household"),
    "households.place": ("楼栋-单元-房号", "Building-unit-room"),
    "households.grid": ("网格", "Grid"),
    "households.members": ("成员", "Members"),
    "households.passes": ("通行证", "Passes"),
    "households.outside": ("当前在外", "Outside now"),
    "households.nobody_outside": ("无人外出", "Nobody is out"),
    "households.quota": ("今日额度", "Quota today"),
    "households.exits_today": ("今日外出次数", "Exits today"),
    "households.out_limit": ("同时外出上限", "At once out limit"),
    "households.quarantine": ("居家隔离", "Home quarantine"),
    "households.quarantined": ("隔离中", "Quarantined"),
    "households.not_quarantined": ("未隔离", "Not quarantined"),
    "households.until": ("截止", "Until"),
    "households.until_release": ("至解除为止", "until released"),
    "households.quarantine_on": ("设为居家隔离", "Put under quarantine"),
    "households.quarantine_off": ("解除隔离", "Release"),
    "households.phone": ("电话", "Phone"),
    "households.name": ("姓名", "Name"),
    "households.role": ("身份", "Role"),
    "households.valid": ("有效期", "Valid"),
    "households.revoked": ("已注销", "revoked"),
    "households.active": ("有效", "valid"),
    "households.recent": ("最近通行", "Recent passages"),
    "charts.day": ("今日每小时通行", "Passages per hour today"),
    "charts.week": ("近 7 天每小时通行", "Passages per hour, last 7 days"),
    "charts.reasons": ("今日拒绝原因", "Denials today by reason"),
    "charts.gates": ("今日各闸机", "Today per gate"),
    "charts.in": ("进", "in"),
    "charts.out": ("出", "out"),
    "charts.deny": ("拒绝", "denied"),
    "reports.daily": ("每日报表", "Daily report"),
    "reports.day": ("日期", "Day"),
    "reports.csv": ("下载 CSV", "Download CSV"),
    "reports.xlsx": ("下载 XLSX", "Download XLSX"),
    "reports.preview": ("预览", "Preview"),
    "audit.actor": ("操作人", "Who"),
    "audit.action": ("操作", "Action"),
    "audit.target": ("对象", "Target"),
    "audit.detail": ("说明", "Detail"),
    "audit.overrides": ("门卫人工放行", "Guard overrides"),
    "audit.none": ("暂无记录", "Nothing recorded"),
    "viewer.readonly": ("只读账号：不能修改", "Read-only account: changes are disabled"),
    "done.quarantine": ("已设为居家隔离", "Household put under quarantine"),
    "done.release": ("已解除隔离", "Quarantine released"),
    "done.ack": ("告警已确认", "Alert acknowledged"),
    "visitor.name": ("访客姓名", "Visitor's name"),
    "visitor.phone": ("手机/电话", "Phone"),
    "visitor.reason": ("来访事由", "Reason of visit"),
    "visitor.host": ("被访住户", "Host household"),
    "visitor.temperature": ("体温 (°C)", "Temperature (°C)"),
    "visitor.hours": ("有效时长（小时）", "Valid for (hours)"),
    "visitor.rule": (
        "访客证可进门一次、出门一次；体温达到以下数值不发证：",
        "A visitor pass lets its holder in once and out once; no pass at or above",
    ),
    "visitor.submit": ("登记并发放访客证", "Register and issue a visitor pass"),
    "visitor.today": ("今日访客", "Visitors today"),
    "visitor.until": ("有效至", "Valid until"),
    "visitor.by": ("登记人", "Registered by"),
    "visitor.expired": ("已过期", "expired"),
    "visitor.none": ("今日暂无访客", "No visitors today"),
    "visitor.pass": ("访客证", "Visitor pass"),
    "visitor.registered": (
        "访客已登记，请访客拍下或打印此码",
        "Visitor registered: photograph or print this code",
    ),
    "visitor.once": ("限进门一次、出门一次", "Valid for one entry and one exit"),
    "visitor.photograph": (
        "请拍照保存此码，到闸机出示并测温",
        "Photograph this code and show it at the gate",
    ),
    "visitor.print": ("打印", "Print"),
    "visitor.pass_invalid": (
        "此访客证已过期或已注销",
        "This visitor pass has expired or was revoked",
    ),
    "visitor.fever_clinic": (
        "体温异常，请前往发热门诊",
        "High temperature: please go to the fever clinic",
    ),
    "visitor.err.name": (
        "请填写访客姓名（不超过 64 字）",
        "Enter the visitor's name (at most 64 characters)",
    ),
    "visitor.err.phone": (
        "电话格式不对：应为 11 位手机号（1[3-9]开头）或座机如 010-12345678",
        "Bad phone: a mainland mobile (11 digits, 1[3-9]…) or a landline such as 010-12345678",
    ),
    "visitor.err.reason": (
        "请填写来访事由（不超过 200 字）",
        "Enter the reason of the visit (at most 200 characters)",
    ),
    "visitor.err.host_unknown": ("名册中没有该住户", "This household is not in the register"),
    "visitor.err.host_quarantined": (
        "该住户正在居家隔离，不能接待访客",
        "This household is under home quarantine: no visitors",
    ),
    "visitor.err.temperature": (
        "体温读数不合理（34–43 °C），请重新测温",
        "Implausible temperature (34–43 °C): measure again",
    ),
    "visitor.err.fever": ("体温异常，不发放访客证。", "Fever: no visitor pass."),
    "visitor.err.hours": ("有效时长应为 1–24 小时", "Valid for 1 to 24 hours"),
    "none": ("—", "—"),
}


def pick(lang: str | None) -> str:
    return lang if lang in LANGS else DEFAULT


def text(lang: str, key: str) -> str:
    zh, en = STRINGS[key]
    return en if lang == "en" else zh


def reason_text(lang: str, reason: str) -> str:
    m = message(reason)
    return m.en if lang == "en" else m.zh


def alert_kind(lang: str, kind: str) -> str:
    key = f"alert.{kind}"
    if key in STRINGS:
        return text(lang, key)
    return reason_text(lang, kind)
