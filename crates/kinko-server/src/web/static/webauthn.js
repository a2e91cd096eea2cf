// kinko web console: the WebAuthn ceremony (passkeys). The only script kinko serves, loaded only by the
// pages that create or use a passkey. The page's form carries the options kinko's API answered in
// `data-webauthn-options` and the ceremony in `data-webauthn` ("create" or "get"). On submit this script
// asks the browser's authenticator, writes its answer as JSON (binary fields base64url, as webauthn-rs
// reads them) into the hidden `credential` field, and submits the form: the CSRF token travels with it as
// with every form. Failures are shown in the page's `#webauthn-status` alert; nothing is sent then.
'use strict';

(function () {
  const form = document.getElementById('webauthn-form');
  if (!form) return;
  const statusBox = document.getElementById('webauthn-status');
  const button = document.getElementById('webauthn-button');

  function show(text) {
    statusBox.textContent = text;
    statusBox.hidden = false;
  }

  function fromB64u(text) {
    const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4);
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes.buffer;
  }

  function toB64u(buffer) {
    const bytes = new Uint8Array(buffer);
    let raw = '';
    for (let i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
    return btoa(raw).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  // webauthn-rs may serialise absent options as null; the browser's dictionaries want them left out.
  function dropNulls(value) {
    if (Array.isArray(value)) return value.map(dropNulls);
    if (value && typeof value === 'object') {
      const out = {};
      for (const [k, v] of Object.entries(value)) if (v !== null && v !== undefined) out[k] = dropNulls(v);
      return out;
    }
    return value;
  }

  function publicKeyOptions(kind) {
    const options = dropNulls(JSON.parse(form.dataset.webauthnOptions));
    const pk = options.publicKey;
    pk.challenge = fromB64u(pk.challenge);
    if (kind === 'create') {
      pk.user.id = fromB64u(pk.user.id);
      (pk.excludeCredentials || []).forEach((c) => (c.id = fromB64u(c.id)));
    } else {
      (pk.allowCredentials || []).forEach((c) => (c.id = fromB64u(c.id)));
    }
    return pk;
  }

  function answer(kind, cred) {
    const r = cred.response;
    const common = { id: cred.id, rawId: toB64u(cred.rawId), type: cred.type, extensions: {} };
    if (kind === 'create') {
      return Object.assign(common, {
        response: { attestationObject: toB64u(r.attestationObject), clientDataJSON: toB64u(r.clientDataJSON) },
      });
    }
    return Object.assign(common, {
      response: {
        authenticatorData: toB64u(r.authenticatorData),
        clientDataJSON: toB64u(r.clientDataJSON),
        signature: toB64u(r.signature),
        userHandle: r.userHandle ? toB64u(r.userHandle) : null,
      },
    });
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const kind = form.dataset.webauthn;
    if (!window.PublicKeyCredential || !navigator.credentials) {
      show('This browser does not support passkeys.');
      return;
    }
    button.disabled = true;
    try {
      const publicKey = publicKeyOptions(kind);
      const cred =
        kind === 'create'
          ? await navigator.credentials.create({ publicKey })
          : await navigator.credentials.get({ publicKey });
      if (!cred) throw new Error('the authenticator gave no answer');
      document.getElementById('credential').value = JSON.stringify(answer(kind, cred));
      form.submit();
    } catch (e) {
      button.disabled = false;
      show(`The passkey prompt did not complete (${e && e.name ? e.name : 'error'}): try again.`);
    }
  });
})();
