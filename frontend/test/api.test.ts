import assert from "node:assert/strict";
import { test } from "node:test";

import { Api, ApiError, cookie } from "../src/api";

type Call = { url: string; init: RequestInit };

function fakeFetch(status: number, body: unknown, calls: Call[]): typeof fetch {
  return (async (url: string, init: RequestInit) => {
    calls.push({ url, init });
    const text = body === undefined ? "" : JSON.stringify(body);
    return new Response(status === 204 ? null : text, { status });
  }) as unknown as typeof fetch;
}

test("POSTs carry JSON and the CSRF token; paths hang off the API base", async () => {
  const calls: Call[] = [];
  const api = new Api({ base: "/api", csrfToken: "tok", fetch: fakeFetch(201, { id: 7, number: 3 }, calls) });
  const { version, bytesSent } = await api.saveVersion(5, {
    parent: 6,
    delta: [[0, 2, 1]],
    effort: { seconds: 1, clicks: 0, strokes: 1, model_calls: 0 },
  });
  assert.equal(version.number, 3);
  assert.equal(calls[0].url, "/api/cases/5/versions/create/");
  const headers = calls[0].init.headers as Record<string, string>;
  assert.equal(headers["X-CSRFToken"], "tok");
  assert.equal(headers["Content-Type"], "application/json");
  const sent = JSON.parse(calls[0].init.body as string);
  assert.deepEqual(sent.delta, [[0, 2, 1]]);
  assert.equal(sent.parent, 6);
  assert.equal(bytesSent, (calls[0].init.body as string).length);
});

test("a stale parent (409) names the head; a lock (423) names the holder", async () => {
  const stale = new Api({
    base: "/api/",
    fetch: fakeFetch(409, { message: "This case changed", extra: { head: { id: 9, number: 4 } } }, []),
  });
  await assert.rejects(
    stale.saveVersion(1, { parent: 1, labelmap: "", effort: { seconds: 0, clicks: 0, strokes: 0, model_calls: 0 } }),
    (err: unknown) => err instanceof ApiError && err.status === 409 && err.staleHead?.number === 4,
  );
  const locked = new Api({
    base: "/api/",
    fetch: fakeFetch(423, { message: "bob holds this case", extra: { holder: "bob" } }, []),
  });
  await assert.rejects(locked.heartbeat(1), (err: unknown) => err instanceof ApiError && err.holder === "bob");
});

test("no next case answers null (204); a non-JSON error still has a message", async () => {
  const api = new Api({ base: "/api/", fetch: fakeFetch(204, undefined, []) });
  assert.equal(await api.nextCase(2), null);
  const broken = new Api({
    base: "/api/",
    fetch: (async () => new Response("<html>oops</html>", { status: 502, statusText: "Bad Gateway" })) as unknown as typeof fetch,
  });
  await assert.rejects(broken.take(1), /failed: 502 Bad Gateway/);
});

test("the CSRF cookie is read when the page gave no token", () => {
  assert.equal(cookie("csrftoken", "sessionid=abc; csrftoken=x%3Dy; other=1"), "x=y");
  assert.equal(cookie("csrftoken", "sessionid=abc"), null);
});
