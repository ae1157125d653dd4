// What every part of the viewer page shares: the API key and calls, the page state, small DOM helpers.
// The state is exposed for tests and benchmarks as window.segserveViewer and document.body.dataset.state.

const KEY_STORAGE = "segserve.apiKey";

export const $ = (id) => document.getElementById(id);

export const viewer = {
  state: "signed-out",
  error: null,
  jobId: null,
  openStart: null, // performance.now() when the job was opened
  decodeMs: null, // open -> both volumes fetched and decoded
  renderMs: null, // open -> first frame drawn with the overlay
  bytes: 0, // volume bytes decoded for the open job (the .nii.gz files)
  transferBytes: 0, // bytes that crossed the network for them (0 from the HTTP cache)
  volumeLoads: 0, // NVImage decodes since the page opened
  reslices: 0, // NiiVue updateGLVolume calls (each re-slices every volume of its view)
  lutUpdates: 0, // label colour table changes (structure toggles)
  labelVersion: 0,
  savedVersion: null,
  referenceShown: false,
  readout: null,
  review: null,
};
window.segserveViewer = viewer;

// For tests and benchmarks: the requests made since the job opened, with the bytes each moved.
viewer.requestsSinceOpen = () =>
  performance
    .getEntriesByType("resource")
    .filter((e) => e.startTime >= viewer.openStart)
    .map((e) => ({ url: new URL(e.name).pathname + new URL(e.name).search, transferSize: e.transferSize }));

export function setState(state, error = null) {
  viewer.state = state;
  viewer.error = error;
  document.body.dataset.state = state;
  $("status-line").textContent = error ? `Error: ${error}` : state;
}

export function show(section) {
  for (const id of ["sign-in", "worklist", "viewer"]) $(id).hidden = id !== section;
  $("sign-out").hidden = section === "sign-in";
}

export function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

export const apiKey = () => sessionStorage.getItem(KEY_STORAGE);

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${apiKey()}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = problem.detail || detail;
    } catch (_) {
      /* not a problem document */
    }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

export const apiJson = async (path, options) => (await api(path, options)).json();

// A request body as gzip (the label volumes the page uploads).
export async function gzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
