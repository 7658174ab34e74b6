// English: the landing page of each role's work, and new-work notifications.
export default {
  'work.title': 'My work',
};
