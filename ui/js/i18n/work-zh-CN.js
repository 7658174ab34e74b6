// 中文：各角色的工作首页与新任务提醒。
export default {
  'work.title': '我的工作',
};
