// One MCP session through the official TypeScript SDK (the copy that
// server-everything depends on): an `echo` whose request is too large for
// the proxy, then a small `echo` in the same client and session.
//
//   node tests/peers/big_echo.mjs --url http://127.0.0.1:PORT/mcp --size 8388608
//
// Prints ONE JSON object: {"initialized", "sessionBefore", "sessionAfter",
// "big": OUTCOME, "small": OUTCOME, "errors"}, where OUTCOME is
// {"ok": true, "textLen": N} or {"ok": false, "name", "code", "message"}.
// Exit 0 once the JSON is written; the caller judges it.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

function arg(name, fallback) {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : fallback;
}

const url = arg('url');
const size = Number(arg('size', '8388608'));
const timeout = Number(arg('timeout', '20000'));
const out = { initialized: false, big: null, small: null, errors: [] };

function outcomeOf(err) {
    // undici hides the socket error in `cause`.
    const cause = err?.cause ? `${err.cause.name ?? ''} ${err.cause.code ?? ''} ${err.cause.message ?? ''}` : null;
    return { ok: false, name: err?.name ?? typeof err, code: err?.code ?? null, message: String(err?.message ?? err), cause };
}

async function echo(client, message) {
    try {
        const r = await client.callTool({ name: 'echo', arguments: { message } }, undefined, { timeout });
        const text = r.content.filter(c => c.type === 'text').map(c => c.text).join('');
        return { ok: !r.isError, textLen: text.length, text: text.slice(0, 64) };
    } catch (err) {
        return outcomeOf(err);
    }
}

const transport = new StreamableHTTPClientTransport(new URL(url));
const client = new Client({ name: 'ringgate-big-echo', version: '1' });
try {
    await client.connect(transport, { timeout });
    out.initialized = true;
    out.sessionBefore = transport.sessionId ?? null;
    out.big = await echo(client, 'b'.repeat(size));
    out.small = await echo(client, 'small after big');
    out.sessionAfter = transport.sessionId ?? null;
    await transport.terminateSession().catch(e => out.errors.push(`terminate: ${e}`));
} catch (err) {
    out.errors.push(`${err?.name}: ${err?.message ?? err}`);
} finally {
    await client.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(0);
