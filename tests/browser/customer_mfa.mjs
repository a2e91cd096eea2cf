// The customer's second factors in a real browser (issue #8; U2, U3, U4): playwright-core driving
// Debian's Chromium, WebAuthn through Chromium's virtual authenticator (DevTools protocol).
//
//   node tests/browser/customer_mfa.mjs <base-url> <artifacts-dir>
//
// Run by crates/kinko/tests/web_mfa.rs against a kinko it started, whose WebAuthn relying party is the
// base URL's origin (`http://localhost:<port>`: browsers refuse an IP address as a relying-party id).
// Inputs besides the arguments, from the environment:
//   KINKO_CHROMIUM          the browser (default /usr/bin/chromium)
//   KINKO_WEB_EMAIL         a signed-up customer with no second factor yet
//   KINKO_WEB_PASSWORD      their login password
//
// Journey: log in → security page → TOTP enrolment (QR code and key shown; a wrong code is refused by
// name; the right code, computed here from the key the page shows, activates it and shows 10 recovery
// codes) → log out → log in with password then TOTP code → add a passkey (virtual authenticator) → log
// out → log in with password then the passkey → step-up with a recovery code and with the passkey, each
// returning to the page that asked → a step-up never returns to another site → remove the authenticator
// app (web::credentials) → log out; the second-factor page offers the passkey, a recovery code of the
// removed app is refused by name, and the passkey opens the portal. Every page visited goes
// through the shared checks of ./lib.mjs (headers, labels, Tab reach, overflow, CSP, screenshots at 375
// and 1280 px).
//
// Prints one JSON object on stdout (progress goes to stderr); exits 0 only when every check passed.

import { createRun, env, launchChromium, submit, totp, totpStep } from './lib.mjs';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node tests/browser/customer_mfa.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
const CHROMIUM = env('KINKO_CHROMIUM', '/usr/bin/chromium');
const EMAIL = env('KINKO_WEB_EMAIL');
const PASSWORD = env('KINKO_WEB_PASSWORD');
const OVERALL_TIMEOUT_MS = 240_000;
const WEBAUTHN_JS = '/static/webauthn.js';

const run = createRun({
  tag: 'mfa',
  artifacts,
  fields: {
    recovery_codes: 0,
    passkey_id: null,
    authenticator_credentials: null,
    webauthn_js: null,
    next_refused: null,
    totp_state_after_removal: null,
    passkey_offered_after_removal: null,
  },
  timeoutMs: OVERALL_TIMEOUT_MS,
});
const { result, check, checkPage, problemShown, log } = run;

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// TOTP codes are single use per 30 s step: wait for a step after `used`.
async function stepAfter(used) {
  while (totpStep() <= used) await sleep(500);
  return totpStep();
}

async function logOut(page) {
  await Promise.all([page.waitForNavigation(), page.locator('header form button[type=submit]').click()]);
  check(page.url() === `${base}/login`, `after log-out the page is ${page.url()}`);
}

async function logIn(page) {
  await page.goto(`${base}/login`);
  await page.fill('#email', EMAIL);
  await page.fill('#password', PASSWORD);
  return submit(page);
}

// Whether a page loads the WebAuthn script (only the ceremony pages may).
const loadsWebauthn = async (page) => (await page.locator(`script[src="${WEBAUTHN_JS}"]`).count()) === 1;

// The ceremony page's button: the script asks the (virtual) authenticator and submits the form.
async function ceremony(page, name) {
  try {
    const [response] = await Promise.all([
      page.waitForNavigation({ timeout: 30_000 }),
      page.locator('#webauthn-button').click(),
    ]);
    return response;
  } catch (e) {
    const shown = await page.textContent('#webauthn-status').catch(() => '');
    throw new Error(`${name}: the WebAuthn ceremony did not complete (page says: ${shown}): ${e.message}`);
  }
}

async function main() {
  const { context, page, close } = await launchChromium(CHROMIUM);
  try {
    run.watchCsp(page);
    page.on('pageerror', (e) => run.fail(`uncaught script error on ${page.url()}: ${e.message}`));
    // Chromium's virtual authenticator: a platform authenticator with user verification, as a phone or
    // laptop passkey would be.
    const cdp = await context.newCDPSession(page);
    await cdp.send('WebAuthn.enable');
    const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: {
        protocol: 'ctap2',
        transport: 'internal',
        hasResidentKey: true,
        hasUserVerification: true,
        isUserVerified: true,
      },
    });

    // The script is served by kinko with a JavaScript type (nosniff would refuse anything else).
    const js = await context.request.get(`${base}${WEBAUTHN_JS}`);
    result.webauthn_js = { status: js.status(), type: js.headers()['content-type'] };
    check(js.status() === 200 && (js.headers()['content-type'] || '').startsWith('text/javascript'), `webauthn.js: ${JSON.stringify(result.webauthn_js)}`);

    // Log in (no factor yet) → the security page.
    let r = await logIn(page);
    check(page.url() === `${base}/portal`, `after log-in the page is ${page.url()}`);
    r = await page.goto(`${base}/portal/security`);
    await checkPage(page, 'security', r, { status: 200 });
    check(!(await loadsWebauthn(page)), 'security: loads the WebAuthn script');
    check((await page.textContent('#totp-state')).includes('not set up'), 'security: TOTP shown as active before enrolment');

    // TOTP enrolment: the QR code and the key.
    await page.fill('#totp-password', PASSWORD);
    r = await submit(page, 'form[action="/portal/security/totp"] button[type=submit]');
    await checkPage(page, 'totp-enrol', r, { status: 201 });
    const qr = await page.evaluate(() => {
      const img = document.getElementById('totp-qr');
      return img && { complete: img.complete, w: img.naturalWidth, alt: img.alt, src: img.src.slice(0, 26) };
    });
    check(qr && qr.complete && qr.w >= 200 && qr.src === 'data:image/svg+xml;base64,', `TOTP QR: ${JSON.stringify(qr)}`);
    const secret = (await page.textContent('#totp-secret'))?.trim() || '';
    check(/^[A-Z2-7]{32}$/.test(secret), `totp-enrol: the key reads ${secret}`);

    // A wrong code is refused by name; the enrolment stays open.
    await page.fill('#code', totp(secret, totpStep() + 7));
    r = await submit(page);
    await checkPage(page, 'totp-enrol-error', r, { status: 403 });
    await problemShown(page, 'totp-enrol-error', 'Second factor refused');

    // The right code: active, with 10 recovery codes shown once.
    const enrolStep = totpStep();
    await page.fill('#code', totp(secret, enrolStep));
    r = await submit(page);
    await checkPage(page, 'totp-recovery-codes', r, { status: 200 });
    const codes = (await page.locator('#recovery-codes li').allTextContents()).map((c) => c.trim());
    result.recovery_codes = codes.length;
    check(codes.length === 10 && codes.every((c) => /^[0-9a-f]{5}(-[0-9a-f]{5}){3}$/.test(c)), `recovery codes: ${codes.join(' ')}`);

    // The session now needs the factor: /portal goes to the second-factor page.
    await page.goto(`${base}/portal`);
    check(page.url() === `${base}/login/second-factor`, `after enrolment /portal opened ${page.url()}`);

    // Log out; log in with password then a TOTP code.
    await logOut(page);
    r = await logIn(page);
    check(page.url() === `${base}/login/second-factor`, `TOTP log-in went to ${page.url()}`);
    await checkPage(page, 'second-factor', r, { status: 200 });
    check((await page.locator('#passkey-choice').count()) === 0, 'second-factor: offers a passkey before one exists');
    const step = await stepAfter(enrolStep);
    await page.fill('#code', totp(secret, step));
    r = await submit(page);
    check(page.url() === `${base}/portal`, `after the TOTP code the page is ${page.url()}`);
    await checkPage(page, 'dashboard-totp', r, { status: 200 });

    // Add a passkey: password (and the step-up the TOTP log-in just gave), then the authenticator.
    r = await page.goto(`${base}/portal/security`);
    await page.fill('#passkey-password', PASSWORD);
    r = await submit(page, 'form[action="/portal/security/passkey"] button[type=submit]');
    await checkPage(page, 'passkey-enrol', r, { status: 200 });
    check(await loadsWebauthn(page), 'passkey-enrol: the WebAuthn script is not loaded');
    r = await ceremony(page, 'passkey-enrol');
    await checkPage(page, 'passkey-added', r, { status: 201 });
    result.passkey_id = (await page.textContent('#passkey-id').catch(() => ''))?.trim();
    check(/^[0-9a-f]{32,}$/.test(result.passkey_id || ''), `passkey-added: credential ${result.passkey_id}`);
    const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    result.authenticator_credentials = credentials.length;
    check(credentials.length === 1, `the virtual authenticator holds ${credentials.length} credentials`);

    // Log out; log in with password then the passkey.
    await page.goto(`${base}/portal`);
    await logOut(page);
    r = await logIn(page);
    check(page.url() === `${base}/login/second-factor`, `passkey log-in went to ${page.url()}`);
    await checkPage(page, 'second-factor-with-passkey', r, { status: 200 });
    r = await submit(page, '#passkey-choice button[type=submit]');
    await checkPage(page, 'passkey-login', r, { status: 200 });
    check(await loadsWebauthn(page), 'passkey-login: the WebAuthn script is not loaded');
    r = await ceremony(page, 'passkey-login');
    check(page.url() === `${base}/portal`, `after the passkey the page is ${page.url()}`);
    await checkPage(page, 'dashboard-passkey', r, { status: 200 });
    const { credentials: used } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    check(used.length === 1 && used[0].signCount >= 1, `the passkey was not used: ${JSON.stringify(used.map((c) => c.signCount))}`);

    // Step-up with a recovery code, back to the page that asked.
    r = await page.goto(`${base}/portal/step-up?next=/portal/security`);
    await checkPage(page, 'step-up', r, { status: 200 });
    await page.selectOption('#method', 'recovery_code');
    await page.fill('#code', codes[0] || '');
    r = await submit(page, `form[action="/portal/step-up"] button[type=submit]`);
    check(page.url() === `${base}/portal/security`, `after the recovery code the page is ${page.url()}`);
    await checkPage(page, 'security-after-step-up', r, { status: 200 });
    check((await page.textContent('#totp-state')).includes('9 recovery codes'), `security: ${await page.textContent('#totp-state')}`);
    check((await page.textContent('#passkey-count')).trim() === '1', 'security: passkey count is not 1');

    // The same recovery code again is refused by name.
    r = await page.goto(`${base}/portal/step-up?next=/portal/security`);
    await page.selectOption('#method', 'recovery_code');
    await page.fill('#code', codes[0] || '');
    r = await submit(page, `form[action="/portal/step-up"] button[type=submit]`);
    await checkPage(page, 'step-up-error', r, { status: 403 });
    await problemShown(page, 'step-up-error', 'Second factor refused');

    // Step-up with the passkey, back to the page that asked.
    r = await page.goto(`${base}/portal/step-up?next=/portal/security`);
    r = await submit(page, '#passkey-choice button[type=submit]');
    await checkPage(page, 'step-up-passkey', r, { status: 200 });
    r = await ceremony(page, 'step-up-passkey');
    check(page.url() === `${base}/portal/security`, `after the passkey step-up the page is ${page.url()}`);

    // A step-up never returns to another site.
    await page.goto(`${base}/portal/step-up?next=${encodeURIComponent('https://evil.example/')}`);
    result.next_refused = await page.inputValue('form[action="/portal/step-up"] input[name=next]');
    check(result.next_refused === '/portal', `step-up: next became ${result.next_refused}`);

    // Remove the authenticator app (web::credentials): the passkey step-up just made is the fresh one the
    // API's removal needs. The passkey stays the second factor.
    r = await page.goto(`${base}/portal/security`);
    r = await submit(page, '#remove-totp button[type=submit]');
    await checkPage(page, 'totp-removed', r, { status: 200 });
    r = await page.goto(`${base}/portal/security`);
    await checkPage(page, 'security-after-removal', r, { status: 200 });
    result.totp_state_after_removal = (await page.textContent('#totp-state')).trim();
    check(result.totp_state_after_removal === 'not set up', `security after removal: ${result.totp_state_after_removal}`);
    check((await page.locator('#remove-totp').count()) === 0, 'security: still offers to remove the app');

    // The old codes no longer step up; log-in now offers the passkey, which opens the portal.
    await logOut(page);
    r = await logIn(page);
    check(page.url() === `${base}/login/second-factor`, `log-in after removal went to ${page.url()}`);
    await checkPage(page, 'second-factor-passkey-only', r, { status: 200 });
    result.passkey_offered_after_removal = (await page.locator('#passkey-choice').count()) === 1;
    check(result.passkey_offered_after_removal, 'second-factor: the passkey is not offered after the app was removed');
    await page.selectOption('#method', 'recovery_code');
    await page.fill('#code', codes[1] || '');
    r = await submit(page, 'form[action="/login/second-factor"] button[type=submit]');
    await checkPage(page, 'second-factor-removed-code', r, { status: 403 });
    await problemShown(page, 'second-factor-removed-code', 'Second factor refused');
    r = await submit(page, '#passkey-choice button[type=submit]');
    r = await ceremony(page, 'passkey-login-after-removal');
    check(page.url() === `${base}/portal`, `after the passkey (app removed) the page is ${page.url()}`);

    run.checkNoCspViolations();
    log('journey done');
  } finally {
    await close();
  }
}

run.main(main);
