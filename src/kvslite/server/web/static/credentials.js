/* The user's AWS keys: the administrator's, an IAM user's, or temporary ones with a session
 * token (e.g. from the IoT credential provider); kept in sessionStorage (this tab only),
 * asked for in a dialog. */

import { $ } from './dom.js';

const STORAGE_KEY = 'kvslite.credentials';

/** {accessKeyId, secretAccessKey, sessionToken (temporary keys only), region}, or null when
 * the user gave none. */
export function loadCredentials() {
  try {
    const value = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null');
    return value && value.accessKeyId && value.secretAccessKey ? value : null;
  } catch (_) {
    return null;
  }
}

function openDialog(reason) {
  const form = $('#credentials-form');
  const saved = loadCredentials();
  $('#credentials-reason').textContent = reason;
  if (saved) {
    form.accessKeyId.value = saved.accessKeyId;
    form.region.value = saved.region || 'us-east-1';
  }
  $('#credentials-dialog').showModal();
}

/** For the API client, when the server refuses a request for want of (good) keys. */
export function askForCredentials(error) {
  if ($('#credentials-dialog').open) return;
  openDialog((loadCredentials()
    ? `The server refused these keys (${error.code}: ${error.message.replace(/\.$/, '')}).`
    : 'This server requires AWS Signature Version 4.') +
    ' The keys stay in this tab (sessionStorage).');
}

/** onSaved runs once new keys are stored, to redo what the old ones could not. */
export function setupCredentials(onSaved) {
  const dialog = $('#credentials-dialog');
  const form = $('#credentials-form');
  $('#credentials-button').addEventListener('click', () => {
    openDialog('Keys for servers started with --access-key-id: the administrator\'s or an ' +
      'IAM user\'s; temporary keys also need their session token. ' +
      'They stay in this tab (sessionStorage).');
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({
      accessKeyId: form.accessKeyId.value.trim(),
      secretAccessKey: form.secretAccessKey.value,
      ...(form.sessionToken.value.trim() ? { sessionToken: form.sessionToken.value.trim() } : {}),
      region: form.region.value.trim() || 'us-east-1',
    }));
    form.secretAccessKey.value = '';
    form.sessionToken.value = '';
    dialog.close();
    onSaved();
  });
  $('#credentials-cancel').addEventListener('click', () => dialog.close());
  $('#credentials-forget').addEventListener('click', () => {
    sessionStorage.removeItem(STORAGE_KEY);
    form.reset();
    dialog.close();
  });
}
