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
    'login.title': '登录',
    'login.username': '用户名',
    'login.password': '密码',
    'login.submit': '登录',
    'login.logout': '退出',
    'login.wrong': '用户名或密码错误。',
    'login.throttled': '尝试次数过多，请稍后再试。',
    'login.disabled': '该账号已停用，请联系管理员。',
    'role.grid_worker': '网格员',
    'role.township_staff': '乡镇工作人员',
    'role.dept_handler': '部门处置人员',
    'role.county_it': '县大数据中心',
    'role.admin': '管理员',
    'users.username': '用户名',
    'users.display_name': '姓名',
    'users.role': '角色',
    'users.area': '区划代码',
    'users.department': '部门',
    'users.phone': '电话',
    'users.password': '初始密码',
    'users.state': '状态',
    'users.actions': '操作',
    'users.active': '正常',
    'users.disabled': '已停用',
    'users.local': '本机账号',
    'users.add': '添加',
    'users.add_title': '添加用户',
    'users.reset': '重置密码',
    'users.disable': '停用',
    'users.new_password': '新密码：',
    'users.confirm_disable': '确定停用',
    'users.done': '已完成',
    'audit.seq': '序号',
    'audit.time': '时间',
    'audit.actor': '操作人',
    'audit.action': '操作',
    'audit.target': '对象',
    'audit.detail': '详情',
    'audit.from': '开始时间',
    'audit.to': '结束时间',
    'audit.search': '查询',
    'audit.more': '更早的记录',
    'audit.none': '没有符合条件的记录。',

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
    'login.title': 'Sign in',
    'login.username': 'Username',
    'login.password': 'Password',
    'login.submit': 'Sign in',
    'login.logout': 'Sign out',
    'login.wrong': 'Wrong username or password.',
    'login.throttled': 'Too many attempts. Try again later.',
    'login.disabled': 'This account is disabled. Ask an administrator.',
    'role.grid_worker': 'Grid worker',
    'role.township_staff': 'Township staff',
    'role.dept_handler': 'Department handler',
    'role.county_it': 'County IT',
    'role.admin': 'Administrator',
    'users.username': 'Username',
    'users.display_name': 'Name',
    'users.role': 'Role',
    'users.area': 'Area code',
    'users.department': 'Department',
    'users.phone': 'Phone',
    'users.password': 'Initial password',
    'users.state': 'State',
    'users.actions': 'Actions',
    'users.active': 'Active',
    'users.disabled': 'Disabled',
    'users.local': 'Local account',
    'users.add': 'Add',
    'users.add_title': 'Add a user',
    'users.reset': 'Reset password',
    'users.disable': 'Disable',
    'users.new_password': 'New password for',
    'users.confirm_disable': 'Disable',
    'users.done': 'Done',
    'audit.seq': 'Seq',
    'audit.time': 'Time',
    'audit.actor': 'Actor',
    'audit.action': 'Action',
    'audit.target': 'Target',
    'audit.detail': 'Detail',
    'audit.from': 'From',
    'audit.to': 'To',
    'audit.search': 'Search',
    'audit.more': 'Older entries',
    'audit.none': 'No matching entries.',

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
