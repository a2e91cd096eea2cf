// The customer journey of issue #8's acceptance, entirely in the browser: playwright-core driving Debian's
// Chromium.
//
//   node tests/browser/customer_money.mjs <base-url> <artifacts-dir>
//
// Run by crates/kinko/tests/web_money.rs against a kinko it started (SQLite, anvil, e-mail verification
// by mailed token, KYC decided by operators). Inputs besides the arguments, from the environment:
//   KINKO_CHROMIUM                  the browser (default /usr/bin/chromium)
//   KINKO_WEB_MAIL_DIR              kinko's [notices] mail_dir: the verification token and the confirmation link
//   KINKO_WEB_ANVIL_URL             anvil's JSON-RPC: the deposit payment, and the blocks that confirm
//   KINKO_WEB_EMAIL, KINKO_WEB_PASSWORD, KINKO_WEB_TRANSACTION_PASSWORD  the customer this script signs up
//   KINKO_WEB_PAYER                 an unlocked anvil account that pays the deposit (eth_sendTransaction)
//   KINKO_WEB_DEPOSIT_WEI           the deposit, in wei (decimal)
//   KINKO_WEB_DESTINATION           the address to save and withdraw to
//   KINKO_WEB_AMOUNT                the amount to withdraw, decimal text ("0.25")
//   KINKO_WEB_CONFIRMATIONS         kinko's confirmation depth
//   KINKO_WEB_KYC_REFERENCE         the passport's document reference submitted on /portal/kyc
//
// Journey: sign up → verify the e-mail with the mailed token → log in → security page: set up the
// authenticator app (the code computed here from the key the page shows) → the second factor at once →
// the dashboard's link to the identity page: a blank document reference is refused by name, then the
// passport's reference is submitted →
// set the transaction password (the login password is refused by name first) → the deposit address, read
// off the page → pay it on anvil → the history shows the deposit pending; blocks are mined and the page's
// own reload (Refresh: 5) shows it credited → the identity page, reloaded, shows the identity verified
// (operators decide it while the script runs: see web_money.rs), and so does the dashboard → save the destination in the address book (its cooling-off
// shown) → the withdrawal form offers it once the cooling-off is over → a wrong transaction password is
// refused by name → step up on the portal's step-up page → withdraw with the transaction password → the
// mailed link's page confirms it → the history shows it settled → the login history. Every page is
// checked by `checkPage` (lib.mjs).
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
const PAYER = env('KINKO_WEB_PAYER');
const DEPOSIT_WEI = BigInt(env('KINKO_WEB_DEPOSIT_WEI'));
const DESTINATION = env('KINKO_WEB_DESTINATION');
const AMOUNT = env('KINKO_WEB_AMOUNT');
const CONFIRMATIONS = Number(env('KINKO_WEB_CONFIRMATIONS'));
const KYC_REFERENCE = env('KINKO_WEB_KYC_REFERENCE');
const OVERALL_TIMEOUT_MS = 540_000;
const MAIL_WAIT_MS = 60_000;
const DEPOSIT_SEEN_MS = 60_000;
const KYC_WAIT_MS = 120_000;
const SETTLED_MS = 120_000;

const run = createRun({
  tag: 'money',
  artifacts,
  fields: {
    email: EMAIL,
    totp_secret: null,
    recovery_codes: 0,
    deposit_address: null,
    deposit_tx_hash: null,
    deposit_states: [],
    history_refresh: null,
    kyc_submitted_state: null,
    kyc_page_shown: null,
    kyc_shown: null,
    withdrawal_id: null,
  },
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

// The TOTP key the security page showed, and the newest 30 s step whose code was used (codes are single
// use per step).
let totpSecret = '';
let stepUsed = 0;

// A TOTP code of a step not used yet, waiting for the next step when needed.
async function freshCode() {
  while (totpStep() <= stepUsed) await sleep(500);
  stepUsed = totpStep();
  return totp(totpSecret, stepUsed);
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

// The text of the dashboard's <dd> after the <dt> that reads `term`.
const definition = (page, term) =>
  page.evaluate((t) => {
    const dt = [...document.querySelectorAll('main dt')].find((d) => d.textContent.trim() === t);
    return dt && dt.nextElementSibling ? dt.nextElementSibling.textContent.trim() : null;
  }, term);

async function main() {
  const { page, close } = await launchChromium(CHROMIUM);
  try {
    run.watchCsp(page);

    // Sign up, and verify the e-mail address with the token kinko mailed.
    let r = await page.goto(`${base}/signup`);
    await checkPage(page, 'signup', r, { status: 200 });
    await page.fill('#email', EMAIL);
    await page.fill('#password', PASSWORD);
    r = await submit(page);
    await checkPage(page, 'signup-done', r, { status: 201 });
    const verification = mailToken(MAIL_DIR, EMAIL, /^Verification token: ([0-9a-f]{64})$/m, MAIL_WAIT_MS);
    check(verification, `no verification mail for ${EMAIL} in ${MAIL_DIR} within ${MAIL_WAIT_MS} ms`);
    r = await page.goto(`${base}/verify-email`);
    await checkPage(page, 'verify-email', r, { status: 200 });
    await page.fill('#token', verification || '');
    r = await submit(page);
    await checkPage(page, 'verify-email-done', r, { status: 200 });
    check((await page.textContent('main h1')).includes('verified'), 'verify-email-done: not verified');

    // Log in: no factor yet, so the password opens the portal.
    r = await page.goto(`${base}/login`);
    await checkPage(page, 'login', r, { status: 200 });
    await page.fill('#email', EMAIL);
    await page.fill('#password', PASSWORD);
    r = await submit(page);
    check(page.url() === `${base}/portal`, `the log-in went to ${page.url()}`);
    await checkPage(page, 'dashboard-new', r, { status: 200 });

    // The authenticator app, set up on the security page with the key it shows.
    r = await page.goto(`${base}/portal/security`);
    await checkPage(page, 'security', r, { status: 200 });
    check((await page.textContent('#security-transaction-password')).trim() === 'not set', 'security: a transaction password is shown as set');
    await page.fill('#totp-password', PASSWORD);
    r = await submit(page, 'form[action="/portal/security/totp"] button[type=submit]');
    await checkPage(page, 'totp-enrol', r, { status: 201 });
    totpSecret = ((await page.textContent('#totp-secret')) || '').trim();
    result.totp_secret = totpSecret;
    check(/^[A-Z2-7]{32}$/.test(totpSecret), `totp-enrol: the key reads ${totpSecret}`);
    await page.fill('#code', await freshCode());
    r = await submit(page);
    await checkPage(page, 'totp-recovery-codes', r, { status: 200 });
    result.recovery_codes = await page.locator('#recovery-codes li').count();
    check(result.recovery_codes === 10, `${result.recovery_codes} recovery codes shown`);

    // The session must now prove the factor: the second-factor page, with the next step's code.
    await page.goto(`${base}/portal`);
    check(page.url() === `${base}/login/second-factor`, `after enrolment /portal opened ${page.url()}`);
    r = await page.reload();
    await checkPage(page, 'second-factor', r, { status: 200 });
    await page.selectOption('#method', 'totp');
    await page.fill('#code', await freshCode());
    r = await submit(page);
    check(page.url() === `${base}/portal`, `the second factor went to ${page.url()}`);
    await checkPage(page, 'dashboard', r, { status: 200 });

    // The identity (KYC), from the dashboard's link: a blank reference is refused by name (the API's 422,
    // the form shown again), then the passport's reference is submitted. Operators decide it meanwhile.
    [r] = await Promise.all([page.waitForNavigation(), page.click('#kyc-link')]);
    check(page.url() === `${base}/portal/kyc`, `the dashboard's KYC link went to ${page.url()}`);
    await checkPage(page, 'kyc', r, { status: 200 });
    const kycState = () => page.getAttribute('#kyc-state', 'data-state').catch(() => null);
    check((await kycState()) === 'not_submitted', `kyc: the state reads ${await kycState()}`);
    await page.selectOption('#kyc-kind-1', 'passport');
    await page.fill('#kyc-reference-1', '   ');
    r = await submit(page, 'main form[action="/portal/kyc"] button[type=submit]');
    await checkPage(page, 'kyc-error', r, { status: 422 });
    await problemShown(page, 'kyc-error', 'documents[0].reference');
    check((await page.getAttribute('#kyc-reference-1', 'aria-invalid')) === 'true', 'kyc-error: the row is not marked');
    await page.selectOption('#kyc-kind-1', 'passport');
    await page.fill('#kyc-reference-1', KYC_REFERENCE);
    r = await submit(page, 'main form[action="/portal/kyc"] button[type=submit]');
    await checkPage(page, 'kyc-submitted', r, { status: 201 });
    result.kyc_submitted_state = await kycState();
    const listed = await page.locator('#kyc-documents td.reference').allTextContents();
    check(listed.length === 1 && listed[0].trim() === KYC_REFERENCE, `kyc-submitted: documents listed ${listed}`);
    check((await page.locator('main form[action="/portal/kyc"]').count()) === 0, 'kyc-submitted: the form is still offered');

    // The transaction password, on its page (the code just proven is the fresh step-up it needs). The
    // login password is refused by name first.
    await page.goto(`${base}/portal/security`);
    [r] = await Promise.all([page.waitForNavigation(), page.click('#transaction-password-link')]);
    check(page.url() === `${base}/portal/security/transaction-password`, `the security page linked to ${page.url()}`);
    await checkPage(page, 'transaction-password', r, { status: 200 });
    await page.fill('#transaction-password', PASSWORD);
    await page.fill('#transaction-password-repeat', PASSWORD);
    r = await submit(page, 'main form[action="/portal/security/transaction-password"] button[type=submit]');
    await checkPage(page, 'transaction-password-error', r, { status: 422 });
    await problemShown(page, 'transaction-password-error', 'must differ from the login password');
    await page.fill('#transaction-password', TRANSACTION_PASSWORD);
    await page.fill('#transaction-password-repeat', TRANSACTION_PASSWORD);
    r = await submit(page, 'main form[action="/portal/security/transaction-password"] button[type=submit]');
    await checkPage(page, 'transaction-password-set', r, { status: 200 });
    r = await page.goto(`${base}/portal/security`);
    await checkPage(page, 'security-done', r, { status: 200 });
    check((await page.textContent('#security-transaction-password')).trim() === 'set', 'security: the transaction password is not shown as set');
    check((await page.textContent('#totp-state')).includes('10 recovery codes'), `security: ${await page.textContent('#totp-state')}`);

    // The deposit address, read off the page, paid on anvil (mined at once: one confirmation).
    r = await page.goto(`${base}/portal/deposit`);
    await checkPage(page, 'deposit', r, { status: 200 });
    await page.selectOption('#asset', 'ETH');
    r = await submit(page);
    await checkPage(page, 'deposit-address', r, { status: 200 });
    const address = ((await page.textContent('#deposit-address')) || '').trim();
    result.deposit_address = address;
    check(/^0x[0-9a-f]{40}$/.test(address), `deposit-address: shows ${address}`);
    result.deposit_tx_hash = await anvil('eth_sendTransaction', [
      { from: PAYER, to: address, value: `0x${DEPOSIT_WEI.toString(16)}` },
    ]);
    log(`paid ${DEPOSIT_WEI} wei to ${address} in ${result.deposit_tx_hash}`);

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

    // The identity: operators verify it while the script runs (web_money.rs); the identity page, reloaded,
    // shows it, and so does the dashboard.
    const kycDeadline = Date.now() + KYC_WAIT_MS;
    r = await page.goto(`${base}/portal/kyc`);
    result.kyc_page_shown = await kycState();
    while (result.kyc_page_shown !== 'verified' && Date.now() < kycDeadline) {
      await sleep(1_000);
      r = await page.reload();
      result.kyc_page_shown = await kycState();
    }
    check(result.kyc_page_shown === 'verified', `the identity page shows the state "${result.kyc_page_shown}"`);
    await checkPage(page, 'kyc-verified', r, { status: 200 });
    const decided = ((await page.textContent('#submission-decided').catch(() => '')) || '').trim();
    check(decided.endsWith('UTC'), `kyc-verified: the decision date reads "${decided}"`);
    r = await page.goto(`${base}/portal`);
    result.kyc_shown = await definition(page, 'Identity (KYC)');
    while (result.kyc_shown !== 'verified' && Date.now() < kycDeadline) {
      await sleep(1_000);
      r = await page.goto(`${base}/portal`);
      result.kyc_shown = await definition(page, 'Identity (KYC)');
    }
    check(result.kyc_shown === 'verified', `the dashboard shows the identity as "${result.kyc_shown}"`);
    await checkPage(page, 'dashboard-verified', r, { status: 200 });
    const available = await page.locator('td.available[data-asset=ETH]').textContent().catch(() => null);
    check(available === '2 ETH', `dashboard: the ETH balance reads ${available}`);

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
      // U4: the page shows what the token confirms before the customer confirms it.
      result.confirm_page_amount = (await page.locator('#pending-amount').textContent()).trim();
      result.confirm_page_destination = (await page.locator('#pending-destination').textContent()).trim();
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
    // The browser's one password log-in (the KYC documents are submitted on the page, not on an API session
    // of the test's, so no other log-in happens while the script runs).
    check(outcomes.filter((o) => o.trim() === 'success').length >= 1, `logins listed: ${outcomes}`);

    run.checkNoCspViolations();
    log('journey done');
  } finally {
    await close();
  }
}

run.main(main);
