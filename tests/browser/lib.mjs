// Shared helpers for kinko's browser tests (issue #8): playwright-core driving Debian's Chromium.
//
// Every script under tests/browser imports these instead of keeping its own copy:
//   createRun({ tag, artifacts, fields, timeoutMs })  the result/fail/check/log recorder, `checkPage` (headers,
//                             <h1>, stylesheet, no inline script/style, labels, Tab reachability, overflow at
//                             375 px, screenshots at 375 and 1280 px into the artifacts dir), `problemShown`,
//                             the CSP-violation collector, and `main(fn)` which runs the journey and prints
//                             the one JSON result object on stdout (exit 0 only when every check passed).
//   launchChromium(path)      Chromium with the design.md flags and a fresh profile.
//   submit(page, selector)    clicks a form's submit button and returns the navigation's response.
//   mailToken(dir, email, regex, waitMs)  the first capture group of `regex` in a mail kinko wrote for `email`.
//   base32(text), totp(secret, step)      RFC 6238 codes (SHA-1, 6 digits, 30 s steps).
//   env(name, fallback)       a required environment variable (exit 2 when missing).

import { chromium } from 'playwright-core';
import { createHmac } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const EXPECTED_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'";
export const WIDTHS = [375, 1280];
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return v;
};

// ---------------------------------------------------------------------------------------------------
// The run: its result object, the recorder, and the checks run on every page.

export function createRun({ tag, artifacts, fields = {}, timeoutMs }) {
  const result = { ok: false, failures: [], pages: [], ...fields };
  const fail = (what) => {
    console.error(`FAIL: ${what}`);
    result.failures.push(what);
  };
  const check = (cond, what) => {
    if (!cond) fail(what);
    return cond;
  };
  const log = (...a) => console.error(`[${tag}]`, ...a);

  if (timeoutMs) {
    setTimeout(() => {
      fail(`the journey did not finish within ${timeoutMs} ms`);
      console.log(JSON.stringify(result));
      process.exit(1);
    }, timeoutMs).unref();
  }

  // The CSP-violation collector: console messages in which Chromium reports a refused resource.
  const cspViolations = [];
  const watchCsp = (page) => {
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
    });
  };
  const checkNoCspViolations = () =>
    check(cspViolations.length === 0, `the browser reported CSP violations: ${cspViolations.join(' | ')}`);

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

  // The page names the problem in its role=alert element.
  async function problemShown(page, name, text) {
    const alert = page.locator('[role=alert]');
    const shown = (await alert.count()) > 0 ? await alert.first().textContent() : '';
    check(shown.includes(text), `${name}: the page does not name the problem "${text}" (shows: ${shown.trim()})`);
  }

  // Empties the artifacts dir of old screenshots, runs the journey, checks the screenshots are not empty,
  // prints the result and exits (0 only when every check passed).
  function main(journey) {
    mkdirSync(artifacts, { recursive: true });
    for (const f of readdirSync(artifacts)) if (f.endsWith('.png')) rmSync(join(artifacts, f));
    (async () => {
      await journey();
      for (const p of result.pages) {
        for (const s of p.screenshots) check(statSync(s).size > 1000, `screenshot ${s} is empty`);
      }
    })()
      .catch((e) => fail(`the journey stopped: ${e && e.stack ? e.stack : e}`))
      .finally(() => {
        result.ok = result.failures.length === 0;
        console.log(JSON.stringify(result));
        process.exit(result.ok ? 0 : 1);
      });
  }

  // The operator console's log-in: operator id, password and a TOTP code on /ops/login, landing on the
  // approval queue. `who`: { id, password, totp (the secret), after (optional: the TOTP step this operator
  // already used elsewhere, e.g. a command-line log-in; each code is accepted once) }.
  async function opsLogIn(page, base, who, tag) {
    let r = await page.goto(`${base}/ops/login`);
    await checkPage(page, `${tag}-login`, r, { status: 200 });
    await page.fill('#operator_id', who.id);
    await page.fill('#password', who.password);
    // A step the server has not seen from this operator: the current one, or the next (one step of skew).
    const step = Math.max(totpStep(), (who.after ?? -1) + 1);
    if (result.totp_steps) result.totp_steps[who.id] = step;
    await page.fill('#totp_code', totp(who.totp, step));
    r = await submit(page, 'form[action="/ops/login"] button[type=submit]');
    check(page.url() === `${base}/ops`, `${tag}: after log-in the page is ${page.url()}`);
    return r;
  }

  async function opsLogOut(page, base, tag) {
    await submit(page, 'form[action="/ops/logout"] button[type=submit]');
    check(page.url() === `${base}/ops/login`, `${tag}: after log-out the page is ${page.url()}`);
  }

  return {
    result,
    fail,
    check,
    log,
    checkPage,
    problemShown,
    cspViolations,
    watchCsp,
    checkNoCspViolations,
    main,
    opsLogIn,
    opsLogOut,
  };
}

// The trimmed text of the first element matching `selector`; '' when there is none.
export const textOf = async (page, selector) =>
  ((await page.locator(selector).first().textContent().catch(() => null)) || '').trim();

// ---------------------------------------------------------------------------------------------------
// The browser.

// Chromium with a fresh profile every run (playwright takes it as the persistent context's user data
// directory, which it passes to Chromium as --user-data-dir). `close()` closes it and deletes the profile.
export async function launchChromium(executablePath) {
  const profile = mkdtempSync(join(tmpdir(), 'kinko-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    viewport: { width: 1280, height: 900 },
    args: CHROMIUM_ARGS,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, profile, close };
}

// Submits a form by keyboard-free click and returns the response of the navigation it causes.
export async function submit(page, selector = 'main form button[type=submit]') {
  const [response] = await Promise.all([page.waitForNavigation(), page.locator(selector).first().click()]);
  return response;
}

// ---------------------------------------------------------------------------------------------------
// Helpers outside the browser: mailed tokens and TOTP codes.

// The first capture group of `regex` in an .eml file under `mailDir` that mentions `email`, polling for up
// to `waitMs`; null when none arrives.
export function mailToken(mailDir, email, regex, waitMs = 30_000) {
  const deadline = Date.now() + waitMs;
  while (Date.now() < deadline) {
    let files = [];
    try {
      files = readdirSync(mailDir).filter((f) => f.endsWith('.eml'));
    } catch {}
    for (const f of files) {
      // Quoted-printable: soft line breaks are "=\r\n".
      const text = readFileSync(join(mailDir, f), 'utf8').replace(/\r/g, '').replace(/=\n/g, '');
      if (!text.includes(email)) continue;
      const m = text.match(regex);
      if (m) return m[1];
    }
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 250);
  }
  return null;
}

export function base32(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of text.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

export function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = createHmac('sha1', base32(secret)).update(counter).digest();
  const offset = mac[mac.length - 1] & 15;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

// The current 30-second TOTP step.
export const totpStep = () => Math.floor(Date.now() / 30_000);
