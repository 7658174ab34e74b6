// Translations: zh-CN first, English second. Keys are stable; missing English falls back to Chinese.
const dictionaries = {
  'zh-CN': {
    'app.title': '基层治理节点',
    'nav.overview': '概览',
    'nav.incidents': '事件',
    'nav.tasks': '我的任务',
    'nav.sensors': '监测',
    'nav.warnings': '预警',
    'nav.broadcast': '应急广播',
    'nav.nodes': '节点',
    'nav.users': '用户',
    'nav.audit': '审计',
    'common.loading': '加载中…',
    'common.retry': '重试',
    'common.unreachable': '无法连接本节点，请检查网络后重试。',
    'lang.switch': 'English',
    'link.unknown': '状态未知',
    'link.local': '本地运行',
    'overview.title': '节点概览',
    'overview.node': '本节点',
    'overview.name': '名称',
    'overview.role': '层级',
    'overview.area': '行政区划代码',
    'overview.node_id': '节点编号',
    'overview.public_key': '节点公钥',
    'overview.version': '软件版本',
    'overview.uptime': '已运行',
    'overview.health': '运行状态',
    'overview.ready': '数据库',
    'overview.ready_ok': '正常',
    'overview.ready_bad': '异常',
    'role.county': '县级中心',
    'role.township': '乡镇（街道）',
    'role.village': '村（社区）',
    'pending.title': '尚未启用',
    'pending.body': '本节点当前版本还没有这项功能。它在以后的版本中提供；届时此页面会自动出现内容。',
    'notfound.title': '页面不存在',
    'notfound.body': '没有找到这个页面。',
    'page.incidents': '事件上报与处置',
    'page.tasks': '我的任务',
    'page.sensors': '监测站点',
    'page.warnings': '风险预警',
    'page.broadcast': '应急广播',
    'page.nodes': '下级节点',
    'page.users': '用户管理',
    'page.audit': '审计日志',
    'unit.days': '天',
    'unit.hours': '小时',
    'unit.minutes': '分钟',
  },
  en: {
    'app.title': 'Township node',
    'nav.overview': 'Overview',
    'nav.incidents': 'Incidents',
    'nav.tasks': 'My tasks',
    'nav.sensors': 'Sensors',
    'nav.warnings': 'Warnings',
    'nav.broadcast': 'Broadcast',
    'nav.nodes': 'Nodes',
    'nav.users': 'Users',
    'nav.audit': 'Audit',
    'common.loading': 'Loading…',
    'common.retry': 'Retry',
    'common.unreachable': 'Cannot reach this node. Check the network and try again.',
    'lang.switch': '中文',
    'link.unknown': 'Status unknown',
    'link.local': 'Running locally',
    'overview.title': 'Node overview',
    'overview.node': 'This node',
    'overview.name': 'Name',
    'overview.role': 'Level',
    'overview.area': 'Area code',
    'overview.node_id': 'Node id',
    'overview.public_key': 'Public key',
    'overview.version': 'Version',
    'overview.uptime': 'Uptime',
    'overview.health': 'Health',
    'overview.ready': 'Database',
    'overview.ready_ok': 'OK',
    'overview.ready_bad': 'Not answering',
    'role.county': 'County centre',
    'role.township': 'Township',
    'role.village': 'Village',
    'pending.title': 'Not available yet',
    'pending.body': 'This version of the node does not have this feature yet. It comes in a later release; this page will then show it.',
    'notfound.title': 'Page not found',
    'notfound.body': 'There is no such page.',
    'page.incidents': 'Incidents',
    'page.tasks': 'My tasks',
    'page.sensors': 'Monitoring stations',
    'page.warnings': 'Warnings',
    'page.broadcast': 'Emergency broadcast',
    'page.nodes': 'Downstream nodes',
    'page.users': 'Users',
    'page.audit': 'Audit log',
    'unit.days': 'd',
    'unit.hours': 'h',
    'unit.minutes': 'min',
  },
};

const STORAGE_KEY = 'township.lang';
let current = pickInitial();

function pickInitial() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && dictionaries[saved]) return saved;
  } catch (_) { /* storage may be disabled; Chinese is the default */ }
  return 'zh-CN';
}

export function lang() {
  return current;
}

export function t(key) {
  return dictionaries[current][key] ?? dictionaries['zh-CN'][key] ?? key;
}

export function setLang(next) {
  if (!dictionaries[next]) return;
  current = next;
  try { localStorage.setItem(STORAGE_KEY, next); } catch (_) { /* not fatal */ }
  applyTranslations(document);
}

export function toggleLang() {
  setLang(current === 'zh-CN' ? 'en' : 'zh-CN');
}

// Fills every element that carries data-i18n with the text for the current language.
export function applyTranslations(root) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll('[data-i18n]')) {
    el.textContent = t(el.dataset.i18n);
  }
  const toggle = document.getElementById('lang-toggle');
  if (toggle) {
    toggle.textContent = t('lang.switch');
    toggle.lang = current === 'zh-CN' ? 'en' : 'zh-CN';
  }
}

export const languages = Object.keys(dictionaries);
export function keysOf(language) {
  return Object.keys(dictionaries[language]);
}
