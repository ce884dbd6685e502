// Builds the browser code into static/annotation/ (served by Django's staticfiles):
//   node build.mjs            one production build (minified, split into ES module chunks, source maps)
//   node build.mjs --watch    rebuild on change
//   node build.mjs --tests    bundle test/*.test.ts into .test-build/ for `node --test`
import { readdirSync } from "node:fs";
import { rm } from "node:fs/promises";
import * as esbuild from "esbuild";

const watch = process.argv.includes("--watch");
const tests = process.argv.includes("--tests");

if (tests) {
  await rm(".test-build", { recursive: true, force: true });
  const entryPoints = readdirSync("test").filter((f) => f.endsWith(".test.ts")).map((f) => `test/${f}`);
  await esbuild.build({
    entryPoints,
    outdir: ".test-build",
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node18",
    outExtension: { ".js": ".mjs" },
    logLevel: "warning",
  });
} else {
  const options = {
    entryPoints: [
      { in: "src/case_page.ts", out: "case" },
      { in: "src/case.css", out: "case" },
      { in: "src/worklist_page.ts", out: "worklist" },
      // NiiVue in a chunk of its own, cached across our releases (see src/niivue_chunk.ts)
      { in: "src/niivue_chunk.ts", out: "niivue" },
    ],
    outdir: "static/annotation",
    bundle: true,
    format: "esm",
    // ES module chunks: what is only imported on demand (zarrita's blosc/zstd/lz4 decoders, 1.3 MB of
    // NiiVue's Zarr support we do not use) stays out of the first load, and code the pages share is
    // loaded once. Django's collectstatic hashes every file and rewrites these imports to the hashed names.
    splitting: true,
    chunkNames: "chunks/[name]-[hash]",
    target: ["chrome100", "firefox100", "safari15"],
    minify: !watch,
    sourcemap: true,
    legalComments: "linked",
    logLevel: "info",
  };
  if (watch) {
    const ctx = await esbuild.context(options);
    await ctx.watch();
  } else {
    await rm("static/annotation", { recursive: true, force: true });
    await esbuild.build(options);
  }
}
