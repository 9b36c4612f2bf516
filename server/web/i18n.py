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
    "nav.policy": ("通行规则", "Policy"),
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
    "gate.minutes": ("分钟", "min"),
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
    "households.not_yet_valid": ("尚未生效", "not yet valid"),
    "households.expired": ("已过期", "expired"),
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
    "policy.published": ("已发布的规则（闸机执行的）", "Published rules (what gates enforce)"),
    "policy.version": ("配置版本", "Config version"),
    "policy.issued": ("签发时间", "Issued"),
    "policy.key": ("规则项", "Rule"),
    "policy.value": ("值", "Value"),
    "policy.state": ("状态", "State"),
    "policy.published_value": ("已发布", "Published"),
    "policy.candidate_value": ("server.toml 中", "In server.toml"),
    "policy.diff": ("与 server.toml 的差异", "Difference to server.toml"),
    "policy.same": (
        "server.toml 的 [policy] 与已发布规则相同，无需发布",
        "server.toml's [policy] is the published policy: nothing to publish",
    ),
    "policy.invalid": (
        "server.toml 的 [policy] 有错误，不能试运行或发布：",
        "server.toml's [policy] has an error and can be neither tried nor published:",
    ),
    "policy.publish": ("发布新规则", "Publish"),
    "policy.publish_note": (
        "发布后在线闸机几秒内生效；发布人和每项变更记入审计日志",
        "Online gates apply it within seconds; who published what goes to the audit log",
    ),
    "policy.admin_only": ("只有管理员可以发布", "Only an admin may publish"),
    "policy.candidate_changed": (
        "您查看之后 server.toml 又被修改：请重新检查差异后再发布",
        "server.toml's [policy] changed after you loaded this page: review the difference again",
    ),
    "policy.try": ("试运行", "Try"),
    "policy.try_title": ("用已记录的通行试运行", "Try on recorded traffic"),
    "policy.try_intro": (
        "把已记录的扫码按已发布规则和 server.toml 中的规则各判定一次，列出会改变的结果",
        "Replays recorded scans under the published rules and under server.toml's, and lists"
        " the decisions that would change",
    ),
    "policy.try_unavailable": (
        "此控制台未加载判定核心，不能试运行：请用命令 menwei policy try",
        "Try-out is unavailable in this dashboard (no decision core): use menwei policy try",
    ),
    "policy.bad_since": ("起始日期应为 YYYY-MM-DD", "Since must be a date, YYYY-MM-DD"),
    "policy.since": ("起始日期", "Since"),
    "policy.replayed": ("重放的判定", "Decisions replayed"),
    "policy.changed": ("会改变的判定", "Decisions that would change"),
    "policy.from_to": ("原因（已发布 → 新规则）", "Reason (published → candidate)"),
    "policy.count": ("次数", "Count"),
    "policy.sample": ("最近会改变的判定", "Latest decisions that would change"),
    "policy.register_note": (
        "按今天的名册重放：此后注销的通行证、隔离的住户在旧记录中同样被拒绝（两种规则都一样）",
        "Replayed with today's register: passes revoked and households quarantined since are"
        " refused in old traffic too (under both rules)",
    ),
    "policy.truncated": (
        "记录太多，只重放了最近的一部分",
        "Too many records: only the latest were replayed",
    ),
    "policy.skipped": (
        "没有扫码内容、未重放的判定（出门按钮、人工放行）",
        "Decisions without a scanned text, not replayed (exit button, guard override)",
    ),
    "policy.not_reproduced": (
        "按已发布规则重放、与闸机当时结果不同的判定",
        "Decisions whose replay under the published rules differs from what the gate recorded",
    ),
    "policy.rollout": ("各闸机运行的配置版本", "Config version per gate"),
    "policy.rollout_progress": ("已更新闸机", "Gates updated"),
    "policy.rollout_complete": ("全部闸机已更新", "Rollout complete"),
    "policy.rollout_pending": ("等待更新", "waiting"),
    "policy.current": ("已是最新", "current"),
    "done.published": ("新规则已发布", "Policy published"),
    "done.unchanged": ("没有需要发布的变更", "Nothing to publish"),
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
