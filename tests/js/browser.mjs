// Drives examples/web in headless Chromium: waits for the page to embed its sentences, types a query into the box,
// presses Enter, and prints what the page computed (its vectors, the query's vector and hits, its timings) as JSON.
//   node browser.mjs URL QUERY SCREENSHOT.png [CHROMIUM]
import puppeteer from "puppeteer-core";

const [url, query, screenshot, executable = "/usr/bin/chromium"] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: executable,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"], // --no-sandbox: CI runs as root
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 700 });
  const console_ = [];
  page.on("console", (m) => console_.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => console_.push(`pageerror: ${e}`));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction("window.demo && (window.demo.ready || window.demo.error)", { timeout: 240_000 });
  const error = await page.evaluate("window.demo.error");
  if (error) throw new Error(`the page failed: ${error}\n${console_.join("\n")}`);
  await page.type("#query", query);
  await page.keyboard.press("Enter");
  await page.waitForFunction("window.demo.queries > 0", { timeout: 60_000 });
  await page.screenshot({ path: screenshot });
  const demo = await page.evaluate(() => {
    const { sentences, vectors, query, queryVector, hits, loadMs, embedMs, queryMs } = window.demo;
    return { sentences, vectors, query, queryVector, hits, loadMs, embedMs, queryMs,
             isolated: window.crossOriginIsolated, shown: document.getElementById("hits").innerText };
  });
  console.log(JSON.stringify(demo));
} finally {
  await browser.close();
}
