/*! errand client.js: a dependency-free browser helper for errand's job API (served at
 * /client.js). errand.request(url, {method, body, headers, timeoutMs}) submits a request
 * and follows 202 Accepted answers (waiting as Retry-After says, polling the status_url
 * or Location) until a 200: it resolves with the finished job, or rejects with the job's
 * error when the job ended canceled or held for review (draft).
 *
 *   errand.request("/v1/jobs", {body: {account: "acme", request: {url: "https://..."}}})
 *     .then(function (job) { console.log(job.result.json); })
 *     .catch(function (err) { console.log(err.reason, err.message, err.job); });
 */
(function (root) {
  "use strict";

  var DEFAULT_TIMEOUT_MS = 60000;
  var DEFAULT_RETRY_S = 1;
  var MAX_RETRY_S = 30;

  function ErrandError(message, fields) {
    var e = new Error(message);
    e.name = "ErrandError";
    for (var k in fields) {
      if (Object.prototype.hasOwnProperty.call(fields, k)) e[k] = fields[k];
    }
    return e;
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  // Seconds to wait from a Retry-After header: delta-seconds or an HTTP date.
  function retryAfterMs(value) {
    if (!value) return DEFAULT_RETRY_S * 1000;
    var s = Number(value);
    if (!isFinite(s)) {
      var t = Date.parse(value);
      s = isNaN(t) ? DEFAULT_RETRY_S : (t - Date.now()) / 1000;
    }
    return Math.min(Math.max(s, 0.05), MAX_RETRY_S) * 1000;
  }

  function readJson(res) {
    return res.text().then(function (text) {
      if (!text) return null;
      try { return JSON.parse(text); } catch (e) { return {raw: text}; }
    });
  }

  // The finished job decides: succeeded resolves, canceled or held rejects.
  function settle(job) {
    var state = job && job.state;
    if (state === "canceled" || state === "draft") {
      var err = job.error || {};
      throw ErrandError(err.message || ("job " + job.id + " ended " + state), {
        job: job, state: state, category: err.category, reason: err.reason
      });
    }
    return job;
  }

  function request(url, opts) {
    opts = opts || {};
    var timeoutMs = opts.timeoutMs == null ? DEFAULT_TIMEOUT_MS : opts.timeoutMs;
    var deadline = Date.now() + timeoutMs;
    var headers = {};
    var k;
    for (k in (opts.headers || {})) {
      if (Object.prototype.hasOwnProperty.call(opts.headers, k)) headers[k] = opts.headers[k];
    }
    var body = opts.body;
    if (body != null && typeof body !== "string" && !(body instanceof Blob) &&
        !(body instanceof FormData) && !(body instanceof URLSearchParams)) {
      body = JSON.stringify(body);
      if (!headers["Content-Type"] && !headers["content-type"]) {
        headers["Content-Type"] = "application/json";
      }
    }
    var method = (opts.method || (body != null ? "POST" : "GET")).toUpperCase();
    var base = (root.location && root.location.href) || undefined;

    function remaining() { return deadline - Date.now(); }

    function send(target, init) {
      var ctrl = typeof AbortController === "function" ? new AbortController() : null;
      if (ctrl) init.signal = ctrl.signal;
      var timer = ctrl ? setTimeout(function () { ctrl.abort(); }, Math.max(remaining(), 0)) : null;
      init.credentials = init.credentials || "same-origin";
      return fetch(target, init).then(function (res) {
        if (timer) clearTimeout(timer);
        return res;
      }, function (e) {
        if (timer) clearTimeout(timer);
        if (remaining() <= 0) throw ErrandError("timed out after " + timeoutMs + " ms", {reason: "timeout"});
        throw ErrandError("network error: " + (e && e.message || e), {reason: "network"});
      });
    }

    function handle(res, target) {
      return readJson(res).then(function (data) {
        if (res.status === 202) {
          var next = (data && data.status_url) || res.headers.get("Location") || target;
          next = new URL(next, new URL(target, base)).href;
          var wait = retryAfterMs(res.headers.get("Retry-After"));
          if (remaining() <= 0 || wait >= remaining()) {
            throw ErrandError("timed out after " + timeoutMs + " ms; the job is still " +
              ((data && data.state) || "pending"), {reason: "timeout", job: data});
          }
          return sleep(wait).then(function () {
            var pollHeaders = {};
            for (var h in headers) {
              if (Object.prototype.hasOwnProperty.call(headers, h) &&
                  h.toLowerCase() !== "content-type" && h.toLowerCase() !== "idempotency-key") {
                pollHeaders[h] = headers[h];
              }
            }
            return send(next, {method: "GET", headers: pollHeaders}).then(function (r) {
              return handle(r, next);
            });
          });
        }
        if (res.ok) return settle(data);
        var e = (data && data.error) || {};
        throw ErrandError(e.message || ("HTTP " + res.status), {
          status: res.status, code: e.code, reason: e.code || "http_" + res.status, body: data
        });
      });
    }

    return send(url, {method: method, headers: headers, body: body}).then(function (res) {
      return handle(res, url);
    });
  }

  root.errand = {request: request, version: "1"};
})(typeof window !== "undefined" ? window : this);
