// Moving money through the customer portal in a real browser (issue #8 acceptance): playwright-core
// driving Debian's Chromium.
//
//   node tests/browser/customer_money.mjs <base-url> <artifacts-dir>
//
// Run by crates/kinko/tests/web_money.rs against a kinko it started (SQLite, anvil) after it signed the
// customer up, enrolled TOTP and set the transaction password through the API, and paid ETH on anvil to the
// customer's deposit address. Inputs besides the arguments, from the environment:
//   KINKO_CHROMIUM                  the browser (default /usr/bin/chromium)
//   KINKO_WEB_MAIL_DIR              kinko's [notices] mail_dir, where the confirmation link arrives
//   KINKO_WEB_ANVIL_URL             anvil's JSON-RPC, to mine the blocks that confirm transactions
//   KINKO_WEB_EMAIL, KINKO_WEB_PASSWORD, KINKO_WEB_TRANSACTION_PASSWORD
//   KINKO_WEB_TOTP_SECRET, KINKO_WEB_TOTP_STEP_USED  the base32 secret and the 30 s step already used
//   KINKO_WEB_DESTINATION           the address to save and withdraw to
//   KINKO_WEB_AMOUNT                the amount to withdraw, decimal text ("0.25")
//   KINKO_WEB_CONFIRMATIONS         kinko's confirmation depth
//
// Journey: log in with password and TOTP code → the history shows the deposit pending; blocks are mined and
// the page's own reload (Refresh: 5) shows it credited → save the destination in the address book (its
// cooling-off shown) → the withdrawal form offers it once the cooling-off is over → a wrong transaction
// password is refused by name → step up on the portal's step-up page → withdraw with the transaction
// password → the mailed link's page confirms it → the history shows it settled → the login history. Every
// page is checked by `checkPage` (lib.mjs).
//
// Prints one JSON object on stdout (progress goes to stderr); exits 0 only when every check passed.

import { createRun, env, launchChromium, mailToken, submit, totp, totpStep } from './lib.mjs';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node tests/browser/customer_money.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
const CHROMIUM = env('KINKO_CHROMIUM', '/usr/bin/chromium');
const MAIL_DIR = env('KINKO_WEB_MAIL_DIR');
const ANVIL = env('KINKO_WEB_ANVIL_URL');
const EMAIL = env('KINKO_WEB_EMAIL');
const PASSWORD = env('KINKO_WEB_PASSWORD');
const TRANSACTION_PASSWORD = env('KINKO_WEB_TRANSACTION_PASSWORD');
const TOTP_SECRET = env('KINKO_WEB_TOTP_SECRET');
let stepUsed = Number(env('KINKO_WEB_TOTP_STEP_USED'));
const DESTINATION = env('KINKO_WEB_DESTINATION');
const AMOUNT = env('KINKO_WEB_AMOUNT');
const CONFIRMATIONS = Number(env('KINKO_WEB_CONFIRMATIONS'));
const OVERALL_TIMEOUT_MS = 420_000;
const MAIL_WAIT_MS = 60_000;
const DEPOSIT_SEEN_MS = 60_000;
const SETTLED_MS = 120_000;

const run = createRun({
  tag: 'money',
  artifacts,
  fields: { deposit_states: [], history_refresh: null, withdrawal_id: null },
  timeoutMs: OVERALL_TIMEOUT_MS,
});
const { result, check, checkPage, problemShown, log } = run;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function anvil(method, params) {
  const r = await fetch(ANVIL, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
  });
  const v = await r.json();
  if (v.error) throw new Error(`${method}: ${JSON.stringify(v.error)}`);
  return v.result;
}
const mine = (blocks) => anvil('anvil_mine', [`0x${blocks.toString(16)}`]);

// A TOTP code of a step not used yet (codes are single use per 30 s step), waiting for the next step when
// needed.
async function freshCode() {
  while (totpStep() <= stepUsed) await sleep(500);
  stepUsed = totpStep();
  return totp(TOTP_SECRET, stepUsed);
}

// The status cell of the first row of table `table` (newest first), '' when none.
const firstStatus = (page, table) =>
  page
    .locator(`#${table} tbody tr td.status`)
    .first()
    .textContent({ timeout: 1_000 })
    .then((t) => t.trim())
    .catch(() => '');

// Waits until the live history page (which reloads itself every 5 s) shows `want` as the first row's
// status in `table`; no reload by the test. `tick` runs between looks (mining blocks).
async function waitForStatus(page, table, want, timeoutMs, tick) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    last = await firstStatus(page, table);
    if (last.startsWith(want)) return last;
    if (tick) await tick();
    await sleep(500);
  }
  check(false, `the history's ${table} never showed "${want}" (last: "${last}")`);
  return last;
}

async function main() {
  const { page, close } = await launchChromium(CHROMIUM);
  try {
    run.watchCsp(page);

    // Log in: password, then the TOTP code (which also opens the step-up window).
    let r = await page.goto(`${base}/login`);
    await checkPage(page, 'login', r, { status: 200 });
    await page.fill('#email', EMAIL);
    await page.fill('#password', PASSWORD);
    r = await submit(page);
    check(page.url() === `${base}/login/second-factor`, `the log-in went to ${page.url()}`);
    await checkPage(page, 'second-factor', r, { status: 200 });
    await page.selectOption('#method', 'totp');
    await page.fill('#code', await freshCode());
    r = await submit(page);
    check(page.url() === `${base}/portal`, `the second factor went to ${page.url()}`);
    await checkPage(page, 'dashboard', r, { status: 200 });

    // The deposit: pending on the live history page, then credited by the page's own reload.
    r = await page.goto(`${base}/portal/history`);
    result.history_refresh = r.headers()['refresh'] ?? null;
    check(result.history_refresh === '5', `the history's Refresh header is ${result.history_refresh}`);
    const pending = await waitForStatus(page, 'deposits', 'pending', DEPOSIT_SEEN_MS);
    if (pending.startsWith('pending')) result.deposit_states.push('pending');
    await mine(CONFIRMATIONS + 1);
    const credited = await waitForStatus(page, 'deposits', 'credited', DEPOSIT_SEEN_MS);
    if (credited.startsWith('credited')) result.deposit_states.push('credited');
    r = await page.goto(`${base}/portal/history?live=0`);
    await checkPage(page, 'history-credited', r, { status: 200 });
    check(r.headers()['refresh'] === undefined, 'the paused history still reloads');
    const depositAmount = await page.locator('#deposits tbody tr td').nth(1).textContent();
    check(depositAmount.includes('2 ETH'), `the deposit's amount is shown as "${depositAmount}"`);

    // The address book: save the destination; it cools off first.
    r = await page.goto(`${base}/portal/address-book`);
    await checkPage(page, 'address-book', r, { status: 200 });
    await page.fill('#label', 'my cold wallet');
    await page.selectOption('#asset', 'ETH');
    await page.fill('#address', DESTINATION);
    r = await submit(page, 'main form[action="/portal/address-book"] button[type=submit]');
    await checkPage(page, 'address-book-saved', r, { status: 201 });
    const usable = await page.locator('#address-book tbody tr td.usable').first().textContent();
    check(usable.includes('cooling off until'), `the new entry's cooling-off is not shown: "${usable}"`);

    // The withdrawal form offers only usable destinations: none while cooling off.
    r = await page.goto(`${base}/portal/withdraw`);
    await checkPage(page, 'withdraw-cooling-off', r, { status: 200 });
    check((await page.locator('#no-destinations').count()) === 1, 'a cooling-off destination was offered');
    const coolingDeadline = Date.now() + 60_000;
    while ((await page.locator('#destination').count()) === 0 && Date.now() < coolingDeadline) {
      await sleep(1_000);
      r = await page.goto(`${base}/portal/withdraw`);
    }
    await checkPage(page, 'withdraw', r, { status: 200 });
    const offered = await page.locator('#destination option').evaluateAll((os) => os.map((o) => o.value));
    check(offered.includes(DESTINATION.toLowerCase()), `the destination is not offered: ${offered}`);

    // A wrong transaction password: refused, named.
    await page.fill('#amount', AMOUNT);
    await page.fill('#transaction_password', 'not the transaction password');
    r = await submit(page);
    await checkPage(page, 'withdraw-error', r, { status: 403 });
    await problemShown(page, 'withdraw-error', 'Wrong transaction password');

    // Step up on the portal's step-up page (web::mfa), which returns to the withdrawal form.
    r = await page.goto(`${base}/portal/step-up?next=/portal/withdraw`);
    await checkPage(page, 'step-up', r, { status: 200 });
    await page.selectOption('#method', 'totp');
    await page.fill('#code', await freshCode());
    r = await submit(page, 'main form[action="/portal/step-up"] button[type=submit]');
    check(page.url() === `${base}/portal/withdraw`, `the step-up returned to ${page.url()}`);

    // Withdraw with the transaction password.
    await page.fill('#amount', AMOUNT);
    await page.selectOption('#destination', DESTINATION.toLowerCase());
    await page.fill('#transaction_password', TRANSACTION_PASSWORD);
    r = await submit(page);
    await checkPage(page, 'withdraw-requested', r, { status: 202 });
    const id = (await page.locator('#withdrawal-id').textContent()).trim();
    result.withdrawal_id = id;
    result.requested_status = (await page.locator('#withdrawal-status').textContent()).trim();

    // The second channel: the mailed link opens the confirmation page, pre-filled; posting it confirms.
    if (result.requested_status === 'awaiting confirmation') {
      // The mail is quoted-printable: the link's "=" may be written "=3D".
      const escaped = base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      const linkToken = mailToken(
        MAIL_DIR,
        EMAIL,
        new RegExp(`${escaped}/confirm-withdrawal\\?token=(?:3D)?([0-9a-f]{64})`),
        MAIL_WAIT_MS,
      );
      check(linkToken !== null, `no mail to ${EMAIL} links to ${base}/confirm-withdrawal`);
      result.confirmation_link_mailed = linkToken !== null;
      r = await page.goto(`${base}/confirm-withdrawal?token=${linkToken}`);
      await checkPage(page, 'confirm-withdrawal', r, { status: 200 });
      r = await submit(page);
      await checkPage(page, 'withdrawal-confirmed', r, { status: 200 });
      check((await page.locator('#withdrawal-id').textContent()).trim() === id, 'another withdrawal was confirmed');
    }

    // The history follows it to settled while blocks are mined.
    r = await page.goto(`${base}/portal/history`);
    const settled = await waitForStatus(page, 'withdrawals', 'settled', SETTLED_MS, () => mine(1));
    result.settled_status = settled;
    r = await page.goto(`${base}/portal/history?live=0`);
    await checkPage(page, 'history-settled', r, { status: 200 });
    const row = page.locator(`#withdrawals tbody tr[data-id="${id}"]`);
    result.settled_tx_hash = (await row.locator('code.hash').textContent().catch(() => '')).trim() || null;
    const shown = await row.locator('td').nth(1).textContent();
    check(shown.includes(`${AMOUNT} ETH`), `the withdrawal's amount is shown as "${shown}"`);

    // The full login history.
    r = await page.goto(`${base}/portal/logins`);
    await checkPage(page, 'logins', r, { status: 200 });
    check((await page.locator('#last-login').count()) === 1, 'the last login is not shown');
    const outcomes = await page.locator('#logins td.outcome').allTextContents();
    check(outcomes.filter((o) => o.trim() === 'success').length >= 2, `logins listed: ${outcomes}`);

    run.checkNoCspViolations();
    log('journey done');
  } finally {
    await close();
  }
}

run.main(main);
