// Drives Debian's Chromium (headless, through playwright-core) over grantd's public connect
// pages and reports what a user would see; the Rust test (tests/connect_browser.rs) decides
// what is right. Reads a JSON plan on stdin:
//   { "artifacts": dir, "app_html": html, "images": { "https://logo.test/x.png": base64 },
//     "visits": [{ "name", "url", "locale"?, "click"?, "reload"? }] }
// The browser reaches 127.0.0.1 directly and everything else (the app's `return_to` host)
// through a local proxy that answers `app_html`; `images` are served by request interception.
// For each visit, in a fresh browser context: open `url` (and, with `click`, press the page's
// one button and follow wherever it leads; with `reload`, then reload that page, as a user
// pressing F5 on a result page would); for every page reached, report its URL, status,
// <html lang>, title, h1, text, axe-core's serious and critical violations, whether it scrolls
// sideways at 320, 375 and 1280 px, the keyboard focus ring on its button, whether its images
// loaded, and any Content-Security-Policy violation; screenshots go to `artifacts`.
// Prints one JSON line: { "visits": [{ "name", "pages": [report, ...] }] }.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const plan = JSON.parse(readFileSync(0, 'utf8'));
const WIDTHS = [320, 375, 1280];
const SHOTS = [375, 1280];

// Chromium sends loopback requests past any proxy by default, so only the app's host uses it.
const app = http.createServer((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(plan.app_html || '');
});
await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // Not playwright's `proxy` option: that sends loopback through the proxy too.
  args: [`--proxy-server=http://127.0.0.1:${app.address().port}`, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function route(context) {
  for (const [url, body] of Object.entries(plan.images || {})) {
    await context.route(url, (r) => r.fulfill({ status: 200, contentType: 'image/png', body: Buffer.from(body, 'base64') }));
  }
}

async function report(page, name, status, csp) {
  const out = { url: page.url(), status };
  Object.assign(out, await page.evaluate(() => ({
    lang: document.documentElement.lang,
    title: document.title,
    h1: [...document.querySelectorAll('h1')].map((h) => h.innerText.trim()),
    text: document.body.innerText,
    images: [...document.images].map((i) => ({ src: i.src, loaded: i.complete && i.naturalWidth > 0 })),
    button: (() => {
      const b = document.querySelector('button');
      return b && { text: b.innerText.trim(), background: getComputedStyle(b).backgroundColor, color: getComputedStyle(b).color };
    })(),
  })));
  await page.evaluate(axeSource);
  const axe = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  out.violations = axe.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.html) }));
  out.overflow = {};
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: 800 });
    out.overflow[width] = await page.evaluate(() => document.documentElement.scrollWidth > document.documentElement.clientWidth);
    if (SHOTS.includes(width)) {
      const file = join(plan.artifacts, `${name}-${width}.png`);
      await page.screenshot({ path: file, fullPage: true });
    }
  }
  out.focus = await focusRing(page);
  out.csp_violations = [...csp];
  csp.length = 0;
  return out;
}

// Tabs to the button (at most 10 presses) and reads its outline: keyboard focus must show.
async function focusRing(page) {
  if (!(await page.$('button'))) return null;
  for (let i = 0; i < 10; i += 1) {
    await page.keyboard.press('Tab');
    const outline = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e.tagName !== 'BUTTON') return null;
      const s = getComputedStyle(e);
      return { style: s.outlineStyle, width: s.outlineWidth, color: s.outlineColor };
    });
    if (outline) return outline;
  }
  return { style: 'unreachable' };
}

const visits = [];
for (const visit of plan.visits) {
  const context = await browser.newContext({ locale: visit.locale || 'en-US', viewport: { width: 1280, height: 800 } });
  await route(context);
  const page = await context.newPage();
  const csp = [];
  // Progress on stderr: the Rust test shows it when something fails.
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) process.stderr.write(`${visit.name}: at ${f.url()}\n`); });
  page.on('requestfailed', (r) => process.stderr.write(`${visit.name}: failed ${r.url()} ${r.failure()?.errorText}\n`));
  page.on('console', (m) => { if (/Content.Security.Policy/i.test(m.text())) csp.push(m.text()); });
  const pages = [];
  const first = await page.goto(visit.url);
  pages.push(await report(page, `${visit.name}-1`, first && first.status(), csp));
  if (visit.click) {
    const [nav] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'load' }),
      page.click('button'),
    ]);
    pages.push(await report(page, `${visit.name}-2`, nav && nav.status(), csp));
  }
  if (visit.reload) {
    const again = await page.reload();
    pages.push(await report(page, `${visit.name}-3`, again && again.status(), csp));
  }
  visits.push({ name: visit.name, pages });
  await context.close();
}
await browser.close();
app.close();
console.log(JSON.stringify({ visits }));
