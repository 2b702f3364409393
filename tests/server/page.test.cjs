// The tutor page in a real browser: Debian's chromium, headless, driven by
// playwright-core. Types a question, watches thinking stream and the answer
// appear, then stops a long solve mid-thinking.
//
//   NODE_PATH=.tools/node_modules node page.test.cjs BASE_URL API_KEY OUT_DIR
//
// Prints "N passed, M failed"; screenshots go to OUT_DIR.
"use strict";
const { chromium } = require("playwright-core");

const [base, key, out] = process.argv.slice(2);
let passed = 0;
let failed = 0;

async function check(name, f) {
  try {
    await f();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n${e.stack || e}`);
  }
}

async function health() {
  return (await fetch(base + "/health")).json();
}

(async () => {
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--disable-gpu"] });
const page = await browser.newPage({ viewport: { width: 1000, height: 1100 } });
page.setDefaultTimeout(120_000);
const requests = [];
page.on("request", (r) => requests.push(r.url()));

await check("the page loads offline with no external assets", async () => {
  await page.goto(base + "/");
  if ((await page.title()) !== "Reckon tutor") throw new Error("title " + (await page.title()));
  const foreign = requests.filter((u) => !u.startsWith(base));
  if (foreign.length) throw new Error("external requests: " + foreign.join(", "));
});

await check("a question streams its thinking, then the answer and counts", async () => {
  await page.fill("#question", "Tom has 3 boxes with 4 apples in each box. How many apples does he have?");
  await page.fill("#budget", "60");
  await page.fill("#floor", "60");
  await page.click("#solve");
  // The server needs a key: the page asks for it after the 401.
  await page.waitForSelector("#key-label:not(.hidden)");
  const err = await page.textContent("#error");
  if (!/key/i.test(err)) throw new Error("no key error shown: " + err);
  await page.fill("#key", key);
  await page.click("#solve");
  await page.waitForFunction(() => document.getElementById("thinking").textContent.length > 0);
  await page.waitForFunction(() => document.getElementById("status").textContent === "done");
  const thinking = await page.textContent("#thinking");
  const answer = await page.textContent("#answer");
  const final = await page.textContent("#final");
  const stats = await page.textContent("#stats");
  if (!answer.includes("Final Answer:")) throw new Error("answer: " + answer);
  if (!/^(Answer: |No final number found)/.test(final)) throw new Error("final: " + final);
  if (!/thinking 60\b/.test(stats)) throw new Error("stats: " + stats);
  if (thinking.length < 20) throw new Error("thinking: " + thinking);
  await page.screenshot({ path: `${out}/page-answered.png`, fullPage: true });
});

await check("stop mid-thinking ends the solve and frees the slot", async () => {
  await page.fill("#budget", "1500");
  await page.fill("#floor", "1400");
  await page.click("#solve");
  await page.waitForFunction(() => document.getElementById("thinking").textContent.length > 80);
  if ((await health()).slots_busy !== 1) throw new Error("the solve is not running");
  await page.click("#stop");
  await page.waitForFunction(() => document.getElementById("status").textContent === "stopped");
  await page.screenshot({ path: `${out}/page-stopped.png`, fullPage: true });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const h = await health();
    if (h.slots_busy === 0 && h.queued === 0) break;
    if (Date.now() > deadline) throw new Error("slot still busy: " + JSON.stringify(h));
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!(await page.isEnabled("#solve"))) throw new Error("solve button still disabled");
});

await browser.close();
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
