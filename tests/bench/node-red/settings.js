// Node-RED for the alarm bench: no editor, no admin API, no credentials file, quiet logs.
module.exports = {
  uiPort: Number(process.env.NODE_RED_PORT || 1880),
  uiHost: '127.0.0.1',
  httpAdminRoot: false,
  httpNodeRoot: false,
  flowFile: 'flow.json',
  credentialSecret: false,
  logging: { console: { level: 'warn', metrics: false, audit: false } },
  editorTheme: { tours: false },
};
