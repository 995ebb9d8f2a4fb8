"use strict";
// Samples in the browser: loads charrnn's WebAssembly module and the checkpoint once, then for
// each request starts a sample and posts its text piece by piece. The module's interface is a
// few C functions over its memory (see web/src/lib.rs in charrnn's source).

const loaded = (async () => {
  const [wasm, model] = await Promise.all([
    fetch("charrnn.wasm").then((r) => { if (!r.ok) throw new Error("charrnn.wasm: " + r.status); return r.arrayBuffer(); }),
    fetch("model.safetensors").then((r) => { if (!r.ok) throw new Error("model.safetensors: " + r.status); return r.arrayBuffer(); }),
  ]);
  const module = await WebAssembly.compile(wasm);
  // The module imports a few functions that its random-number crates' browser backend would
  // use; sampling from a given seed never calls them.
  const imports = {};
  for (const { module: name, name: field, kind } of WebAssembly.Module.imports(module)) {
    if (kind !== "function") continue;
    (imports[name] = imports[name] || {})[field] = () => { throw new Error(`${name}.${field} is not available`); };
  }
  const { exports: x } = await WebAssembly.instantiate(module, imports);
  const utf8 = new TextEncoder(), text = new TextDecoder();
  // Copies bytes in, calls `f(ptr, len)`, frees them; the answer is in the output buffer.
  const call = (f, bytes) => {
    const ptr = x.charrnn_alloc(bytes.length);
    new Uint8Array(x.memory.buffer, ptr, bytes.length).set(bytes);
    const code = f(ptr, bytes.length);
    x.charrnn_free(ptr, bytes.length);
    return code;
  };
  const output = () => text.decode(new Uint8Array(x.memory.buffer, x.charrnn_output_ptr(), x.charrnn_output_len()));
  if (call(x.charrnn_load, new Uint8Array(model)) !== 0) throw new Error(output());
  const info = JSON.parse(output());
  return { x, call, output, utf8, info };
})();

loaded.then(({ info }) => postMessage({ kind: "ready", info }), (e) => postMessage({ kind: "error", error: e.message }));

onmessage = async ({ data: request }) => {
  let m;
  try {
    m = await loaded;
  } catch (e) {
    postMessage({ kind: "error", error: e.message });
    return;
  }
  if (m.call(m.x.charrnn_begin, m.utf8.encode(JSON.stringify(request))) !== 0) {
    postMessage({ kind: "error", error: m.output() });
    return;
  }
  // Pieces are posted in batches of about 20 ms of work, so the page paints as text arrives
  // without a message per character.
  let batch = "", since = performance.now();
  for (;;) {
    const code = m.x.charrnn_next();
    if (code === 1) { postMessage({ kind: "error", error: m.output() }); return; }
    if (code === 2) break;
    batch += m.output();
    if (performance.now() - since > 20) {
      postMessage({ kind: "text", text: batch });
      batch = "";
      since = performance.now();
    }
  }
  if (batch) postMessage({ kind: "text", text: batch });
  postMessage({ kind: "done", seed: request.seed });
};
