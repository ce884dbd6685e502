/**
 * Not a page: an entry point whose only job is to give NiiVue a chunk of its own (frontend/build.mjs).
 * With esbuild's splitting, code that two entries import goes to a shared chunk; this entry and the case
 * page both import NiiVue, so NiiVue (~0.9 MB, 0.3 MB gzipped) lands in a chunk whose content, and so its
 * hashed name, does not change when our own code does: a release leaves it in the browsers' caches.
 * Its own output (static/annotation/niivue.js) is a tiny re-export no page loads.
 */
export * from "@niivue/niivue";
