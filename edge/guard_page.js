// The guard's screen (edge/guard_page.py serves it; its CSP allows no inline script).
// Text from the gate goes into the page with textContent only, never as HTML.
'use strict';
const $ = (id) => document.getElementById(id);
const csrf = document.querySelector('meta[name="csrf-token"]').content;
let instance = null;  // the daemon that served this page: a restarted one needs a new page

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function item(label, ok, text) { return el('span', `${label}: ${text}`, ok ? 'ok' : 'bad'); }
function formEmpty() { return !$('guard').value && !$('pin').value && !$('reason').value; }

function showVerdict(s) {
  const d = s.last;
  const v = $('verdict');
  if (s.measuring) {
    v.className = 'measure'; $('big').textContent = '请测温';
    $('zh').textContent = '请将额头靠近测温探头'; $('en').textContent = 'Please hold your forehead to the sensor';
    $('who').textContent = [s.measuring.name, s.measuring.room].filter(Boolean).join('  ');
  } else if (d && s.last_age_s < 8) {
    v.className = d.guard_required ? 'guard' : (d.decision === 'allow' ? 'allow' : 'deny');
    $('big').textContent = d.decision === 'allow' ? '通行 PASS' : (d.guard_required ? '请门卫核验' : '禁止通行 STOP');
    $('zh').textContent = d.message.zh; $('en').textContent = d.message.en;
    $('who').textContent = [d.name, d.room, d.temperature_c ? d.temperature_c.toFixed(1) + ' °C' : ''].filter(Boolean).join('  ');
  } else if (s.health.storage.state === 'fault') {
    // Nothing can be logged, so nothing is decided: say so, and what to do, in place of "show your pass".
    const st = s.health.storage;
    v.className = 'deny'; $('big').textContent = '存储故障 STORAGE FAULT';
    $('zh').textContent = `${st.message.zh}。${st.fix.zh}`; $('en').textContent = `${st.message.en}. ${st.fix.en}`;
    $('who').textContent = st.since_local ? `自 since ${st.since_local}` : '';
  } else {
    v.className = 'idle'; $('big').textContent = '请出示通行证'; $('zh').textContent = 'Show your pass';
    $('en').textContent = ''; $('who').textContent = '';
  }
}

function showHealth(s) {
  const h = s.health;
  $('health').replaceChildren(
    item('网络 Sync', h.online, `${h.online ? 'online' : 'offline'}, backlog ${h.backlog ?? '?'}`),
    item('摄像头 Camera', h.camera === 'ok', h.camera),
    item('测温 Thermometer', h.thermometer_ok, h.thermometer_ok ? 'ok' : 'check'),
    item('时钟 Clock', h.clock_trusted, h.clock_trusted ? 'synced' : 'not synced'),
    item('数据 Data', !h.data_stale, h.data_age_h === null ? 'none' : `${h.data_age_h.toFixed(1)} h old`),
    item('存储 Storage', h.storage.state === 'ok', h.storage.state === 'ok' ? 'ok' : `${h.storage.kind}: ${h.storage.message.en}`),
    el('span', s.gate),
  );
  $('recent').replaceChildren(...s.recent.map((r) => {
    const row = el('div', `${r.time} ${r.direction === 'in' ? '进' : '出'} `);
    row.append(el('b', r.decision, r.decision === 'allow' ? 'ok' : 'bad'), ` ${r.name || ''} ${r.message.zh}`);
    return row;
  }));
  $('enrol').hidden = s.guards_enrolled !== 0;
}

async function refresh() {
  try {
    const s = await (await fetch('/api/state', {cache: 'no-store'})).json();
    if (instance === null) instance = s.instance;
    else if (s.instance !== instance && formEmpty()) { location.reload(); return; }
    showVerdict(s);
    showHealth(s);
  } catch (e) { $('health').replaceChildren(el('span', 'gate daemon not answering', 'bad')); }
}

function say(text, bad) { $('msg').textContent = text; $('msg').className = bad ? 'bad' : ''; }

$('override').addEventListener('submit', async (e) => {
  e.preventDefault();
  const body = {guard: $('guard').value, pin: $('pin').value, reason: $('reason').value,
    direction: $('direction').value};
  $('pin').value = '';  // never left on the screen
  let r, j;
  try {
    r = await fetch('/api/override', {method: 'POST', cache: 'no-store',
      headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify(body)});
    j = await r.json();
  } catch (err) { say('闸机无响应\nThe gate is not answering', true); return; }
  if (r.ok) { say('已开门并记录\nOpened and recorded', false); $('reason').value = ''; return; }
  say(j.zh && j.en ? `${j.zh}\n${j.en}` : (j.zh || j.error), true);
  if (j.error === 'csrf') setTimeout(() => location.reload(), 3000);  // a page from before a restart
});

setInterval(refresh, 500); refresh();
