// The customer portal in a real browser (issue #8): playwright-core driving Debian's Chromium.
//
//   node tests/browser/customer_portal.mjs <base-url> <artifacts-dir>
//
// Run by crates/kinko/tests/web_portal.rs against a kinko it started (SQLite, anvil). Inputs besides the
// arguments, from the environment:
//   KINKO_CHROMIUM            the browser (default /usr/bin/chromium)
//   KINKO_WEB_MAIL_DIR        kinko's [notices] mail_dir, where the e-mail verification token arrives
//   KINKO_WEB_PASSWORD        the password for the customer this script signs up
//   KINKO_WEB_TOTP_EMAIL, KINKO_WEB_TOTP_PASSWORD, KINKO_WEB_TOTP_SECRET, KINKO_WEB_TOTP_STEP_USED
//                             a customer the test enrolled in TOTP through the API (base32 secret, and the
//                             30-second step already used, which a code must not reuse)
//
// Journey: sign up → verify the e-mail with the mailed token → a refused sign-up and log-in show the
// problem → log in → dashboard → deposit address with its QR code → a refused deposit request shows the
// problem → the withdrawal-confirmation page refuses an unknown token by name → cross-site and token-less
// POSTs are refused → log out (the session stops working) → a TOTP customer logs in with password then
// code. Every page visited is captured at 375 px and 1280 px wide and checked: every input/select/textarea has a label, Tab reaches every interactive element, nothing
// overflows sideways at 375 px, and the browser reports no Content-Security-Policy violation.
//
// Prints one JSON object on stdout (progress goes to stderr); exits 0 only when every check passed.
// The shared machinery (recorder, checkPage, browser launch, mail and TOTP helpers) is in ./lib.mjs.

import { createRun, env, launchChromium, mailToken, submit, totp } from './lib.mjs';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node tests/browser/customer_portal.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
const CHROMIUM = env('KINKO_CHROMIUM', '/usr/bin/chromium');
const MAIL_DIR = env('KINKO_WEB_MAIL_DIR');
const PASSWORD = env('KINKO_WEB_PASSWORD');
const TOTP_EMAIL = env('KINKO_WEB_TOTP_EMAIL');
const TOTP_PASSWORD = env('KINKO_WEB_TOTP_PASSWORD');
const TOTP_SECRET = env('KINKO_WEB_TOTP_SECRET');
const TOTP_STEP_USED = Number(env('KINKO_WEB_TOTP_STEP_USED'));
const OVERALL_TIMEOUT_MS = 240_000;
const MAIL_WAIT_MS = 30_000;

const run = createRun({
  tag: 'portal',
  artifacts,
  fields: { deposit_address: null, cookie: null, csrf: {}, logout: null },
  timeoutMs: OVERALL_TIMEOUT_MS,
});
const { result, check, checkPage, problemShown } = run;

const verificationToken = (email) => mailToken(MAIL_DIR, email, /^Verification token: ([0-9a-f]{64})$/m, MAIL_WAIT_MS);

// ---------------------------------------------------------------------------------------------------

async function main() {
  const { context, page, close } = await launchChromium(CHROMIUM);
  try {
    run.watchCsp(page);
    const email = `web-${Date.now()}@example.com`;
    result.email = email;

    // Sign up.
    let r = await page.goto(`${base}/signup`);
    await checkPage(page, 'signup', r, { status: 200 });
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    r = await submit(page);
    await checkPage(page, 'signup-done', r, { status: 201 });

    // The same e-mail again: the API's 409 is named on the page.
    r = await page.goto(`${base}/signup`);
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    r = await submit(page);
    await checkPage(page, 'signup-error', r, { status: 409 });
    await problemShown(page, 'signup-error', 'E-mail already registered');

    // Verify the e-mail with the token kinko mailed.
    const token = verificationToken(email);
    check(token, `no verification mail for ${email} in ${MAIL_DIR} within ${MAIL_WAIT_MS} ms`);
    r = await page.goto(`${base}/verify-email`);
    await checkPage(page, 'verify-email', r, { status: 200 });
    await page.fill('#token', token || '');
    r = await submit(page);
    await checkPage(page, 'verify-email-done', r, { status: 200 });
    check((await page.textContent('main h1')).includes('verified'), 'verify-email-done: not verified');

    // A wrong password: the API's 401 is named on the page.
    r = await page.goto(`${base}/login`);
    await checkPage(page, 'login', r, { status: 200 });
    await page.fill('#email', email);
    await page.fill('#password', 'not the password at all');
    r = await submit(page);
    await checkPage(page, 'login-error', r, { status: 401 });
    await problemShown(page, 'login-error', 'e-mail or password is wrong');

    // Log in → dashboard.
    await page.fill('#email', email);
    await page.fill('#password', PASSWORD);
    r = await submit(page);
    check(page.url() === `${base}/portal`, `after log-in the page is ${page.url()}, expected ${base}/portal`);
    await checkPage(page, 'dashboard', r, { status: 200 });
    const eth = await page.locator('td.available[data-asset=ETH]').textContent().catch(() => null);
    check(eth === '0 ETH', `dashboard: the ETH balance reads ${eth}`);
    check((await page.locator('table.logins tbody tr').count()) >= 1, 'dashboard: no login history shown');

    // The session cookie as the browser keeps it.
    const cookie = (await context.cookies(base)).find((c) => c.name === '__Host-kinko-session');
    result.cookie = cookie ? { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite } : null;
    check(cookie && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict', `session cookie: ${JSON.stringify(result.cookie)}`);

    // Deposit address with its QR code.
    r = await page.goto(`${base}/portal/deposit`);
    await checkPage(page, 'deposit', r, { status: 200 });
    await page.selectOption('#asset', 'ETH');
    r = await submit(page);
    await checkPage(page, 'deposit-address', r, { status: 200 });
    const address = (await page.textContent('#deposit-address'))?.trim();
    check(/^0x[0-9a-f]{40}$/.test(address || ''), `deposit-address: shows ${address}`);
    result.deposit_address = address;
    const qr = await page.evaluate(() => {
      const img = document.getElementById('deposit-qr');
      return img && { complete: img.complete, w: img.naturalWidth, alt: img.alt, src: img.src.slice(0, 26) };
    });
    check(qr && qr.complete && qr.w >= 200 && qr.src === 'data:image/svg+xml;base64,', `deposit QR: ${JSON.stringify(qr)}`);
    check(qr && qr.alt.includes(address), 'deposit QR: the alt text does not name the address');

    // A deposit request the API refuses (an asset the custodian does not support): the problem is shown.
    await page.evaluate(() => {
      document.querySelector('#asset option').value = 'DOGE';
    });
    r = await submit(page);
    await checkPage(page, 'deposit-error', r, { status: 422 });
    await problemShown(page, 'deposit-error', 'is not an asset this custodian supports');

    // CSRF: a POST without Origin/Sec-Fetch-Site, and one from this origin with a wrong token.
    const noOrigin = await context.request.post(`${base}/portal/deposit`, { form: { csrf: 'x', asset: 'ETH' }, maxRedirects: 0 });
    result.csrf.no_origin = noOrigin.status();
    check(noOrigin.status() === 403 && (await noOrigin.text()).toLowerCase().includes('cross-site request refused'), `POST without Origin: ${noOrigin.status()}`);
    const evil = await context.request.post(`${base}/portal/deposit`, {
      form: { csrf: 'x', asset: 'ETH' },
      headers: { Origin: 'http://evil.example' },
      maxRedirects: 0,
    });
    result.csrf.foreign_origin = evil.status();
    check(evil.status() === 403, `POST from another origin: ${evil.status()}`);
    const badToken = await context.request.post(`${base}/portal/deposit`, {
      form: { csrf: '00'.repeat(32), asset: 'ETH' },
      headers: { Origin: base },
      maxRedirects: 0,
    });
    result.csrf.wrong_token = badToken.status();
    check(badToken.status() === 403 && (await badToken.text()).toLowerCase().includes('form expired or not from this session'), `POST with a wrong token: ${badToken.status()}`);

    // The page the withdrawal confirmation mail links to; a token kinko never issued is refused by name.
    r = await page.goto(`${base}/confirm-withdrawal?token=${'0'.repeat(64)}`);
    await checkPage(page, 'confirm-withdrawal', r, { status: 200 });
    check((await page.inputValue('#token')) === '0'.repeat(64), 'confirm-withdrawal: the link does not pre-fill the token');
    r = await submit(page);
    await checkPage(page, 'confirm-withdrawal-error', r, { status: 422 });
    await problemShown(page, 'confirm-withdrawal-error', 'Confirmation token not valid');

    // Log out: back to log-in, and the old session no longer opens the portal.
    await page.goto(`${base}/portal`);
    await Promise.all([page.waitForNavigation(), page.locator('header form button[type=submit]').click()]);
    check(page.url() === `${base}/login`, `after log-out the page is ${page.url()}`);
    r = await page.goto(`${base}/portal`);
    result.logout = page.url();
    check(page.url() === `${base}/login`, `after log-out /portal opened ${page.url()}`);

    // A customer with TOTP: password, then the code (a wrong code first, whose refusal is named).
    r = await page.goto(`${base}/login`);
    await page.fill('#email', TOTP_EMAIL);
    await page.fill('#password', TOTP_PASSWORD);
    r = await submit(page);
    check(page.url() === `${base}/login/second-factor`, `TOTP log-in went to ${page.url()}`);
    await checkPage(page, 'second-factor', r, { status: 200 });
    r = await page.goto(`${base}/portal`);
    check(page.url() === `${base}/login/second-factor`, `before the code /portal opened ${page.url()}`);
    const wrong = totp(TOTP_SECRET, Math.floor(Date.now() / 30_000) + 7);
    await page.fill('#code', wrong);
    r = await submit(page);
    await checkPage(page, 'second-factor-error', r, { status: 403 });
    await problemShown(page, 'second-factor-error', 'Second factor refused');
    // Codes are single use per 30 s step: wait for a step after the one the test used.
    while (Math.floor(Date.now() / 30_000) <= TOTP_STEP_USED) await new Promise((res) => setTimeout(res, 500));
    await page.selectOption('#method', 'totp');
    await page.fill('#code', totp(TOTP_SECRET, Math.floor(Date.now() / 30_000)));
    r = await submit(page);
    check(page.url() === `${base}/portal`, `after the TOTP code the page is ${page.url()}`);
    await checkPage(page, 'dashboard-totp', r, { status: 200 });

    run.checkNoCspViolations();
  } finally {
    await close();
  }
}

run.main(main);
