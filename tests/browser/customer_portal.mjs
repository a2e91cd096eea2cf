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

import { chromium } from 'playwright-core';
import { createHmac } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node tests/browser/customer_portal.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return v;
};
const CHROMIUM = env('KINKO_CHROMIUM', '/usr/bin/chromium');
const MAIL_DIR = env('KINKO_WEB_MAIL_DIR');
const PASSWORD = env('KINKO_WEB_PASSWORD');
const TOTP_EMAIL = env('KINKO_WEB_TOTP_EMAIL');
const TOTP_PASSWORD = env('KINKO_WEB_TOTP_PASSWORD');
const TOTP_SECRET = env('KINKO_WEB_TOTP_SECRET');
const TOTP_STEP_USED = Number(env('KINKO_WEB_TOTP_STEP_USED'));
const EXPECTED_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'";
const WIDTHS = [375, 1280];
const OVERALL_TIMEOUT_MS = 240_000;
const MAIL_WAIT_MS = 30_000;

const result = { ok: false, failures: [], pages: [], deposit_address: null, cookie: null, csrf: {}, logout: null };
const fail = (what) => {
  console.error(`FAIL: ${what}`);
  result.failures.push(what);
};
const check = (cond, what) => {
  if (!cond) fail(what);
  return cond;
};
const log = (...a) => console.error('[portal]', ...a);

setTimeout(() => {
  fail(`the journey did not finish within ${OVERALL_TIMEOUT_MS} ms`);
  console.log(JSON.stringify(result));
  process.exit(1);
}, OVERALL_TIMEOUT_MS).unref();

// ---------------------------------------------------------------------------------------------------
// Checks run on every page.

const cspViolations = [];

async function checkPage(page, name, response, { status } = {}) {
  const entry = { name, url: page.url(), status: response ? response.status() : null, screenshots: [] };
  result.pages.push(entry);
  if (status !== undefined) check(entry.status === status, `${name}: HTTP ${entry.status}, expected ${status}`);
  if (response) {
    const h = response.headers();
    check(h['content-security-policy'] === EXPECTED_CSP, `${name}: CSP is ${h['content-security-policy']}`);
    check(h['x-content-type-options'] === 'nosniff', `${name}: X-Content-Type-Options missing`);
    check(h['referrer-policy'] === 'no-referrer', `${name}: Referrer-Policy missing`);
    check((h['cache-control'] || '').includes('no-store'), `${name}: Cache-Control is ${h['cache-control']}`);
    check((h['content-type'] || '').startsWith('text/html'), `${name}: content type ${h['content-type']}`);
  }
  // Never a blank page: a main landmark with a heading.
  const h1 = await page.locator('main h1').first().textContent().catch(() => null);
  entry.heading = h1;
  check(h1 && h1.trim().length > 0, `${name}: no <h1> in <main>`);
  check((await page.locator('link[rel=stylesheet]').count()) === 1, `${name}: the stylesheet is not linked`);
  check((await page.locator('script:not([src]), [style]').count()) === 0, `${name}: inline script or style`);

  // Labels: every visible form control has an associated <label> (label[for] or a wrapping label).
  entry.unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
      .filter((el) => !(el.labels && el.labels.length > 0 && [...el.labels].some((l) => l.textContent.trim())))
      .map((el) => el.outerHTML.slice(0, 120)),
  );
  check(entry.unlabelled.length === 0, `${name}: controls without a label: ${entry.unlabelled.join(' | ')}`);

  // Keyboard: Tab from the top of the page reaches every interactive element.
  const count = await page.evaluate(() => {
    const all = [...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea')];
    const shown = all.filter((el) => !el.disabled && el.getClientRects().length > 0);
    shown.forEach((el, i) => el.setAttribute('data-kinko-tab', String(i)));
    document.activeElement?.blur();
    return shown.length;
  });
  // The skip link is positioned off screen until focused; it still counts (it is the first Tab stop).
  const reached = new Set();
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.locator('body').focus().catch(() => {});
  for (let i = 0; i < count + 5; i++) {
    await page.keyboard.press('Tab');
    const id = await page.evaluate(() => document.activeElement?.getAttribute('data-kinko-tab'));
    if (id !== null && id !== undefined) reached.add(id);
  }
  entry.interactive = count;
  entry.tab_reached = reached.size;
  check(count > 0 && reached.size === count, `${name}: Tab reached ${reached.size} of ${count} interactive elements`);

  // Screenshots at each width, and no sideways overflow on the narrow one.
  await page.evaluate(() => document.activeElement?.blur());
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: 900 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `${name}: ${overflow} px of horizontal overflow at ${width} px`);
    const file = join(artifacts, `${String(result.pages.length).padStart(2, '0')}-${name}-${width}.png`);
    await page.screenshot({ path: file, fullPage: true });
    entry.screenshots.push(file);
  }
  await page.setViewportSize({ width: 1280, height: 900 });
  log(`checked ${name} (${entry.url}, HTTP ${entry.status})`);
  return entry;
}

async function problemShown(page, name, text) {
  const alert = page.locator('[role=alert]');
  const shown = (await alert.count()) > 0 ? await alert.first().textContent() : '';
  check(shown.includes(text), `${name}: the page does not name the problem "${text}" (shows: ${shown.trim()})`);
}

// Submits a form by keyboard-free click and returns the response of the navigation it causes.
async function submit(page, selector = 'main form button[type=submit]') {
  const [response] = await Promise.all([page.waitForNavigation(), page.locator(selector).first().click()]);
  return response;
}

// ---------------------------------------------------------------------------------------------------
// Helpers outside the browser: the verification mail and TOTP codes.

function verificationToken(email) {
  const deadline = Date.now() + MAIL_WAIT_MS;
  while (Date.now() < deadline) {
    let files = [];
    try {
      files = readdirSync(MAIL_DIR).filter((f) => f.endsWith('.eml'));
    } catch {}
    for (const f of files) {
      // Quoted-printable: soft line breaks are "=\r\n".
      const text = readFileSync(join(MAIL_DIR, f), 'utf8').replace(/\r/g, '').replace(/=\n/g, '');
      if (!text.includes(email)) continue;
      const m = text.match(/^Verification token: ([0-9a-f]{64})$/m);
      if (m) return m[1];
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 250);
  }
  return null;
}

function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of text.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', base32(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 15;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

// ---------------------------------------------------------------------------------------------------

async function main() {
  mkdirSync(artifacts, { recursive: true });
  for (const f of readdirSync(artifacts)) if (f.endsWith('.png')) rmSync(join(artifacts, f));
  const profile = mkdtempSync(join(tmpdir(), 'kinko-chromium-'));
  // A fresh profile every run (playwright takes it as the persistent context's user data directory, which
  // it passes to Chromium as --user-data-dir).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
    });
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

    check(cspViolations.length === 0, `the browser reported CSP violations: ${cspViolations.join(' | ')}`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
  for (const p of result.pages) {
    for (const s of p.screenshots) check(statSync(s).size > 1000, `screenshot ${s} is empty`);
  }
}

main()
  .catch((e) => fail(`the journey stopped: ${e && e.stack ? e.stack : e}`))
  .finally(() => {
    result.ok = result.failures.length === 0;
    console.log(JSON.stringify(result));
    process.exit(result.ok ? 0 : 1);
  });
