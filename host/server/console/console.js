// The opshost operator console: a client of the /v1 API, with no dependencies.
// Views: sign-in, operations (filters, paging, live list-watch, bulk cancel), one operation
// (timeline, progress, result, logs, cancel, signals), start form, jobs.
'use strict';
(() => {
  const TOKEN_KEY = 'opshost.token';
  const TERMINAL = ['completed', 'failed', 'cancelled'];
  const STATES = ['pending', 'running', 'completed', 'failed', 'cancelled'];
  const JOB_STATES = ['queued', 'running', 'completed', 'dead', 'cancelled'];
  // Rows on a page of operations or jobs.
  const PAGE = 50;
  const main = document.getElementById('main');
  const statusBox = document.getElementById('status');
  let me = null;
  let contract = null;
  let cleanups = [];
  // Counts renders: a view whose awaited answer arrives after the operator moved on drops it.
  let view = 0;

  // ---- DOM and text -------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'text') el.textContent = value;
      else el.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function say(message) {
    statusBox.textContent = message;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { statusBox.textContent = ''; }, 6000);
  }

  function when(text) {
    return text ? new Date(text).toLocaleString() : '';
  }

  function pretty(value) {
    return value === undefined || value === null ? '' : JSON.stringify(value, null, 2);
  }

  function stateBadge(state) {
    return h('span', { class: `state state-${state}` }, state);
  }

  function show(view, heading) {
    main.replaceChildren(view);
    document.title = `${heading} · opshost console`;
    main.focus();
  }

  // ---- The API --------------------------------------------------------------------------

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  class ApiError extends Error {
    constructor(status, message, info) {
      super(message);
      this.status = status;
      this.info = info;
    }
  }

  async function api(method, path, body, headers) {
    const sent = { Authorization: `Bearer ${token()}`, ...(headers || {}) };
    if (body !== undefined) sent['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
    if (!response.ok) {
      const error = data && data.error ? data.error : { message: `${response.status} ${response.statusText}` };
      if (response.status === 401 && me) signOut(`Signed out: ${error.message}`);
      throw new ApiError(response.status, error.message, error);
    }
    return data;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // Server-Sent Events over fetch, so that the token goes in a header. Resumes with
  // Last-Event-ID after a drop; stops at a 204 (nothing more will come) or when the view
  // changes.
  function follow(path, onEvent) {
    const controller = new AbortController();
    cleanups.push(() => controller.abort());
    let lastId = null;
    (async () => {
      while (!controller.signal.aborted) {
        try {
          const headers = { Authorization: `Bearer ${token()}`, Accept: 'text/event-stream' };
          if (lastId) headers['Last-Event-ID'] = lastId;
          const response = await fetch(path, { headers, signal: controller.signal });
          if (response.status === 204) return;
          if (response.status === 401) { signOut('Signed out: the token was refused'); return; }
          if (response.status >= 400 && response.status < 500) {
            const refusal = await response.json().catch(() => null);
            if (lastId && response.status === 400) {
              // The host no longer knows where this stream was (a restored or restarted
              // store): the view is read again from now.
              say('Live updates were reset: the view is read again');
              route();
              return;
            }
            say(`Live updates refused: ${refusal && refusal.error ? refusal.error.message : response.status}`);
            return;
          }
          if (!response.ok) throw new Error(`HTTP ${response.status}`);
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let end;
            while ((end = buffer.indexOf('\n\n')) >= 0) {
              const event = parseFrame(buffer.slice(0, end));
              buffer = buffer.slice(end + 2);
              if (!event) continue;
              if (event.id) lastId = event.id;
              try { onEvent(event); } catch (error) { say(`Could not show an update: ${error.message}`); }
            }
          }
        } catch (_) {
          if (controller.signal.aborted) return;
        }
        await sleep(1000);
      }
    })();
  }

  function parseFrame(frame) {
    const event = { event: 'message', id: '', data: '' };
    let seen = false;
    for (const line of frame.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event.event = value;
      else if (field === 'id') event.id = value;
      else if (field === 'data') event.data += (event.data ? '\n' : '') + value;
      seen = true;
    }
    return seen ? event : null;
  }

  // ---- Schemas --------------------------------------------------------------------------

  function resolve(schema) {
    let current = schema;
    for (let depth = 0; depth < 32; depth += 1) {
      if (typeof current === 'string') current = contract.schemas[current];
      else if (current && typeof current.$ref === 'string') current = contract.schemas[current.$ref.replace(/^#\/schemas\//, '')];
      else return current || {};
    }
    return current || {};
  }

  function typeOf(value) {
    if (value === null) return 'null';
    if (Array.isArray(value)) return 'array';
    if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
    return typeof value;
  }

  // The schema's problems with `value`, each with its JSON path.
  function validate(schemaLike, value, path = '$') {
    const schema = resolve(schemaLike);
    const problems = [];
    const fail = (message) => problems.push({ path, message });
    if (schema.type) {
      const types = Array.isArray(schema.type) ? schema.type : [schema.type];
      const actual = typeOf(value);
      const fits = types.some((type) => type === actual || (type === 'number' && actual === 'integer'));
      if (!fits) { fail(`must be ${types.join(' or ')}, not ${actual}`); return problems; }
    }
    if (schema.enum && !schema.enum.some((option) => JSON.stringify(option) === JSON.stringify(value))) {
      fail(`must be one of ${schema.enum.map((option) => JSON.stringify(option)).join(', ')}`);
    }
    if ('const' in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) fail(`must be ${JSON.stringify(schema.const)}`);
    if (typeof value === 'string') {
      const length = [...value].length;
      if (schema.minLength !== undefined && length < schema.minLength) fail(`must be at least ${schema.minLength} characters`);
      if (schema.maxLength !== undefined && length > schema.maxLength) fail(`must be at most ${schema.maxLength} characters`);
      if (schema.pattern) {
        let pattern = null;
        try { pattern = new RegExp(schema.pattern, 'u'); } catch (_) { /* the host checks what this page cannot */ }
        if (pattern && !pattern.test(value)) fail(`must match ${schema.pattern}`);
      }
    }
    if (typeof value === 'number') {
      if (schema.minimum !== undefined && value < schema.minimum) fail(`must be at least ${schema.minimum}`);
      if (schema.maximum !== undefined && value > schema.maximum) fail(`must be at most ${schema.maximum}`);
      if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) fail(`must be more than ${schema.exclusiveMinimum}`);
      if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) fail(`must be less than ${schema.exclusiveMaximum}`);
      if (schema.multipleOf && !Number.isInteger(value / schema.multipleOf)) fail(`must be a multiple of ${schema.multipleOf}`);
    }
    if (Array.isArray(value)) {
      if (schema.minItems !== undefined && value.length < schema.minItems) fail(`must hold at least ${schema.minItems} item(s)`);
      if (schema.maxItems !== undefined && value.length > schema.maxItems) fail(`must hold at most ${schema.maxItems} item(s)`);
      if (schema.items) value.forEach((item, index) => problems.push(...validate(schema.items, item, `${path}[${index}]`)));
    }
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      for (const name of schema.required || []) {
        if (!(name in value)) problems.push({ path: `${path}.${name}`, message: 'is required' });
      }
      const properties = schema.properties || {};
      for (const [name, item] of Object.entries(value)) {
        if (properties[name]) problems.push(...validate(properties[name], item, `${path}.${name}`));
        else if (schema.additionalProperties === false) problems.push({ path: `${path}.${name}`, message: 'is not allowed' });
      }
    }
    if (Array.isArray(schema.allOf)) schema.allOf.forEach((part) => problems.push(...validate(part, value, path)));
    if (Array.isArray(schema.anyOf) && !schema.anyOf.some((option) => validate(option, value, path).length === 0)) {
      fail(`matches none of its ${schema.anyOf.length} allowed shapes`);
    }
    if (Array.isArray(schema.oneOf)) {
      const fitting = schema.oneOf.filter((option) => validate(option, value, path).length === 0).length;
      if (fitting !== 1) fail(`must match exactly one of its ${schema.oneOf.length} shapes, not ${fitting}`);
    }
    return problems;
  }

  // A form for `schemaLike`: an element and a function that reads the value back.
  function editor(schemaLike, path, label, required) {
    const schema = resolve(schemaLike);
    const id = `f-${path.join('-') || 'value'}`;
    const caption = `${label}${required ? '' : ' (optional)'}`;
    const hint = schema.description ? h('span', { class: 'muted' }, ` ${schema.description}`) : null;
    if (schema.type === 'object' && schema.properties) {
      const required = new Set(schema.required || []);
      const parts = Object.entries(schema.properties).map(([name, property]) => [name, editor(property, [...path, name], name, required.has(name))]);
      const element = h('fieldset', {}, h('legend', {}, caption), hint, parts.map(([, part]) => part.element));
      return {
        element,
        read() {
          const value = {};
          for (const [name, part] of parts) {
            const item = part.read();
            if (item !== undefined) value[name] = item;
          }
          return value;
        },
      };
    }
    if (schema.type === 'array' && schema.items) {
      const items = [];
      const list = h('div', {});
      const add = () => {
        const index = items.length;
        const part = editor(schema.items, [...path, String(index)], `${label} ${index + 1}`, true);
        const remove = h('button', { type: 'button', onclick: () => { items.splice(items.indexOf(entry), 1); entry.box.remove(); } }, `Remove ${label} ${index + 1}`);
        const entry = { part, box: h('div', {}, part.element, remove) };
        items.push(entry);
        list.append(entry.box);
      };
      const element = h('fieldset', {}, h('legend', {}, caption), hint, list,
        h('button', { type: 'button', id: `${id}-add`, onclick: add }, `Add to ${label}`));
      for (let n = 0; n < Math.max(schema.minItems || 0, required ? 1 : 0); n += 1) add();
      return { element, read: () => items.map((entry) => entry.part.read()) };
    }
    if (schema.enum) {
      const select = h('select', { id }, required ? null : h('option', { value: '' }, '—'),
        schema.enum.map((option) => h('option', { value: JSON.stringify(option) }, String(option))));
      return {
        element: h('div', { class: 'field' }, h('label', { for: id }, caption, hint), select),
        read: () => (select.value === '' ? undefined : JSON.parse(select.value)),
      };
    }
    if (schema.type === 'boolean') {
      const box = h('input', { type: 'checkbox', id });
      return {
        element: h('div', { class: 'field' }, box, ' ', h('label', { for: id, class: 'inline' }, caption, hint)),
        read: () => box.checked,
      };
    }
    if (schema.type === 'integer' || schema.type === 'number') {
      const input = h('input', { type: 'number', id, step: schema.type === 'integer' ? '1' : 'any', min: schema.minimum, max: schema.maximum, required });
      return {
        element: h('div', { class: 'field' }, h('label', { for: id }, caption, hint), input),
        read: () => (input.value === '' ? undefined : Number(input.value)),
      };
    }
    if (schema.type === 'string') {
      const input = h('input', { type: 'text', id, required, autocomplete: 'off' });
      return {
        element: h('div', { class: 'field' }, h('label', { for: id }, caption, hint), input),
        read: () => (input.value === '' && !required ? undefined : input.value),
      };
    }
    const area = h('textarea', { id, spellcheck: 'false' });
    return {
      element: h('div', { class: 'field' }, h('label', { for: id }, `${caption} (JSON)`, hint), area),
      read() {
        if (area.value.trim() === '') return undefined;
        try { return JSON.parse(area.value); } catch (error) { throw new Error(`${path.join('.') || 'value'}: not JSON (${error.message})`); }
      },
    };
  }

  function problemList(problems) {
    return h('ul', { class: 'error' }, problems.map((problem) => h('li', {}, `${problem.path} ${problem.message}`)));
  }

  // ---- Session --------------------------------------------------------------------------

  async function loadSession() {
    me = await api('GET', '/v1/me');
    contract = await api('GET', '/v1/contract');
    contract.schemas = contract.schemas || {};
    document.getElementById('nav').hidden = false;
    document.getElementById('nav-jobs').hidden = !me.admin;
    document.getElementById('who').textContent = `${me.subject || 'anonymous'} · ${me.tenant}`;
  }

  function allowed(operation, action) {
    return Boolean(me && me.operations[operation] && me.operations[operation].includes(action));
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    document.getElementById('nav').hidden = true;
    if (message) say(message);
    location.hash = '#/signin';
    route();
  }

  function renderSignIn() {
    const area = h('textarea', { id: 'token', required: true, spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'token-help' });
    const problem = h('p', { class: 'error', role: 'alert', id: 'signin-error' });
    const dev = h('button', { type: 'button', id: 'dev-token', hidden: true }, 'Use the development token');
    const signIn = async (value) => {
      sessionStorage.setItem(TOKEN_KEY, value.trim());
      try {
        await loadSession();
        location.hash = '#/operations';
        route();
      } catch (error) {
        sessionStorage.removeItem(TOKEN_KEY);
        me = null;
        problem.textContent = `Not signed in: ${error.message}`;
      }
    };
    const form = h('form', { class: 'signin', onsubmit: (event) => { event.preventDefault(); signIn(area.value); } },
      h('h1', {}, 'Sign in'),
      h('label', { for: 'token' }, 'Bearer token'),
      area,
      h('p', { class: 'muted', id: 'token-help' }, 'Kept in this tab only (sessionStorage) and sent to this host alone.'),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'sign-in' }, 'Sign in'), dev),
      problem);
    fetch('/console/dev-token').then((response) => (response.ok ? response.json() : null)).then((offer) => {
      if (!offer || !offer.token) return;
      dev.hidden = false;
      dev.addEventListener('click', () => signIn(offer.token));
    }).catch(() => {});
    show(form, 'Sign in');
  }

  // ---- Operations -----------------------------------------------------------------------

  function progressOf(snapshot) {
    const progress = snapshot.progress;
    if (snapshot.state === 'completed') return { value: 1, label: 'done' };
    if (!progress || typeof progress !== 'object') return null;
    if (typeof progress.completed === 'number' && typeof progress.total === 'number' && progress.total > 0) {
      const step = progress.step ? `${progress.step}: ` : '';
      return { value: progress.completed / progress.total, label: `${step}${progress.completed}/${progress.total}` };
    }
    if (typeof progress.percent === 'number') return { value: progress.percent / 100, label: `${progress.percent}%` };
    return null;
  }

  function progressBar(snapshot, label) {
    const progress = progressOf(snapshot);
    if (!progress) return h('span', { class: 'muted' }, '—');
    return h('span', {}, h('progress', { max: '1', value: String(progress.value), 'aria-label': label }), ' ', progress.label);
  }

  function listFilters() {
    const params = new URLSearchParams(location.hash.split('?')[1] || '');
    const filters = {};
    for (const key of ['operation', 'state', 'idPrefix', 'createdFrom', 'createdUntil', 'after']) {
      if (params.get(key)) filters[key] = params.get(key);
    }
    return filters;
  }

  function listQuery(filters) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) {
      if (value) params.set(key, key.startsWith('created') ? new Date(value).toISOString() : String(value));
    }
    return params.toString();
  }

  // The filters as the form shows them, applied or not.
  function formFilters(form) {
    const chosen = {};
    for (const [key, value] of new FormData(form)) if (value) chosen[key] = value;
    return chosen;
  }

  function matches(filters, snapshot) {
    if (filters.operation && snapshot.operation !== filters.operation) return false;
    if (filters.state && snapshot.state !== filters.state) return false;
    if (filters.idPrefix && !snapshot.id.startsWith(filters.idPrefix)) return false;
    const created = new Date(snapshot.createdAt);
    if (filters.createdFrom && created < new Date(filters.createdFrom)) return false;
    if (filters.createdUntil && created >= new Date(filters.createdUntil)) return false;
    return true;
  }

  function operationRow(snapshot) {
    return h('tr', { 'data-id': snapshot.id, 'data-state': snapshot.state, 'data-revision': String(snapshot.revision) },
      h('td', { class: 'mono' }, h('a', { href: `#/operations/${encodeURIComponent(snapshot.id)}` }, snapshot.id)),
      h('td', {}, snapshot.operation),
      h('td', {}, stateBadge(snapshot.state)),
      h('td', {}, progressBar(snapshot, `Progress of ${snapshot.id}`)),
      h('td', {}, when(snapshot.createdAt)),
      h('td', {}, when(snapshot.updatedAt)));
  }

  async function renderOperations() {
    const filters = listFilters();
    const field = (name, label, input) => h('label', { for: `filter-${name}` }, label, input);
    const operations = Object.keys(contract.operations || {});
    const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter operations' },
      field('operation', 'Operation', h('select', { id: 'filter-operation', name: 'operation' }, h('option', { value: '' }, 'Any'),
        operations.map((name) => h('option', { value: name, selected: filters.operation === name }, name)))),
      field('state', 'State', h('select', { id: 'filter-state', name: 'state' }, h('option', { value: '' }, 'Any'),
        STATES.map((state) => h('option', { value: state, selected: filters.state === state }, state)))),
      field('idPrefix', 'Id starts with', h('input', { id: 'filter-idPrefix', name: 'idPrefix', value: filters.idPrefix || '' })),
      field('createdFrom', 'Created from', h('input', { id: 'filter-createdFrom', name: 'createdFrom', type: 'datetime-local', value: filters.createdFrom || '' })),
      field('createdUntil', 'Created before', h('input', { id: 'filter-createdUntil', name: 'createdUntil', type: 'datetime-local', value: filters.createdUntil || '' })),
      h('button', { type: 'submit', class: 'primary' }, 'Apply'),
      h('button', { type: 'button', class: 'danger', id: 'bulk-cancel', onclick: () => bulkCancel(formFilters(form)) }, 'Cancel matching…'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      location.hash = `#/operations?${new URLSearchParams(formFilters(form))}`;
    });
    const rows = h('tbody', { id: 'rows' });
    const live = h('span', { id: 'live', class: 'muted' }, 'connecting to live updates');
    const table = h('table', { id: 'operations' },
      h('caption', {}, 'Operations, by id; ', live),
      h('thead', {}, h('tr', {}, ['Id', 'Operation', 'State', 'Progress', 'Created', 'Updated'].map((name) => h('th', { scope: 'col' }, name)))),
      rows);
    const next = h('button', { type: 'button', id: 'next-page', disabled: true }, 'Next page');
    const first = h('button', { type: 'button', id: 'first-page', disabled: !filters.after,
      onclick: () => { const rest = { ...filters }; delete rest.after; location.hash = `#/operations?${new URLSearchParams(rest)}`; } }, 'First page');
    show(h('section', {}, h('h1', {}, 'Operations'), form, table, h('div', { class: 'pager' }, first, next)), 'Operations');

    // The stream opens first: the page is read once it is `ready`, and changes that arrive
    // meanwhile are applied after it, each only over an older revision of its row.
    const mine = view;
    let loaded = false;
    let loading = false;
    const early = [];
    const apply = (snapshot) => {
      const existing = rows.querySelector(`tr[data-id="${CSS.escape(snapshot.id)}"]`);
      const fits = matches(filters, snapshot);
      if (existing) {
        if (Number(existing.dataset.revision) >= snapshot.revision) return;
        if (fits) existing.replaceWith(operationRow(snapshot));
        else existing.remove();
        return;
      }
      if (!fits || filters.after) return;
      rows.querySelector('tr.empty')?.remove();
      const shown = [...rows.querySelectorAll('tr[data-id]')];
      const later = shown.find((row) => row.dataset.id > snapshot.id);
      if (!later && shown.length >= PAGE) return;
      rows.insertBefore(operationRow(snapshot), later || null);
      // The page keeps its size: what no longer fits is on the next page.
      const all = [...rows.querySelectorAll('tr[data-id]')];
      if (all.length > PAGE) {
        all.slice(PAGE).forEach((row) => row.remove());
        enableNext(all[PAGE - 1].dataset.id);
      }
      say(`New operation ${snapshot.id}`);
    };
    const enableNext = (cursor) => {
      next.disabled = false;
      next.onclick = () => { location.hash = `#/operations?${new URLSearchParams({ ...filters, after: cursor })}`; };
    };
    const load = async () => {
      let page;
      try {
        page = await api('GET', `/v1/operations?${listQuery({ ...filters, limit: PAGE })}`);
      } catch (error) {
        if (mine === view) rows.replaceChildren(h('tr', {}, h('td', { colspan: '6', class: 'error' }, error.message)));
        return;
      }
      if (mine !== view) return;
      rows.replaceChildren(...page.items.map(operationRow));
      if (page.items.length === 0) rows.append(h('tr', { class: 'empty' }, h('td', { colspan: '6', class: 'muted' }, 'No operations match.')));
      if (page.next) enableNext(page.next);
      loaded = true;
      early.splice(0).forEach(apply);
    };
    const loadOnce = () => {
      if (loaded || loading) return;
      loading = true;
      load().finally(() => { loading = false; });
    };
    // Should the stream not open (a proxy that holds it back, a host refusing it), the page is
    // still shown, without live updates.
    const fallback = setTimeout(() => {
      if (loaded) return;
      live.textContent = 'live updates unavailable';
      loadOnce();
    }, 3000);
    cleanups.push(() => clearTimeout(fallback));
    const stream = filters.operation ? `/v1/events?operation=${encodeURIComponent(filters.operation)}` : '/v1/events';
    follow(stream, (event) => {
      if (event.event === 'ready') {
        live.textContent = 'live updates on';
        loadOnce();
        return;
      }
      if (event.event === 'error' || !event.data) return;
      const snapshot = JSON.parse(event.data);
      if (loaded) apply(snapshot);
      else if (early.length < 10000) early.push(snapshot);
    });
  }

  function confirmDialog(text) {
    const dialog = document.getElementById('confirm');
    document.getElementById('confirm-text').textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
      document.getElementById('confirm-no').focus();
    });
  }

  // Cancels every pending or running operation the filter matches, once the operator has
  // confirmed how many that is; a few at a time.
  async function bulkCancel(filters) {
    const query = { ...filters };
    delete query.after;
    const targets = [];
    try {
      let after = null;
      do {
        const page = await api('GET', `/v1/operations?${listQuery(after ? { ...query, after } : query)}`);
        for (const snapshot of page.items) {
          if (!TERMINAL.includes(snapshot.state) && allowed(snapshot.operation, 'cancel')) targets.push(snapshot.id);
        }
        after = page.next;
      } while (after);
    } catch (error) {
      say(`Cannot list what to cancel: ${error.message}`);
      return;
    }
    if (targets.length === 0) { say('No running or pending operation matches this filter.'); return; }
    const plural = targets.length === 1 ? 'operation' : 'operations';
    if (!await confirmDialog(`Cancel ${targets.length} ${plural} matching this filter?`)) return;
    let cancelled = 0;
    const failures = [];
    const queue = [...targets];
    const worker = async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        try {
          const after = await api('POST', `/v1/operations/${encodeURIComponent(id)}/cancel`);
          if (after.state === 'cancelled' || (after.cancelRequested && !TERMINAL.includes(after.state))) cancelled += 1;
          else failures.push(`${id} had already ended ${after.state}`);
        } catch (error) { failures.push(`${id}: ${error.message}`); }
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, targets.length) }, worker));
    say(`Cancelled ${cancelled} of ${targets.length}${failures.length ? `; ${failures.join('; ')}` : ''}`);
  }

  // ---- One operation --------------------------------------------------------------------

  async function renderOperation(id) {
    const heading = h('h1', {}, 'Operation ', h('span', { class: 'mono' }, id), ' ', h('span', { id: 'state' }));
    const facts = h('p', { class: 'muted', id: 'facts' });
    const bar = h('progress', { id: 'progress', max: '1', value: '0', 'aria-label': 'Progress' });
    const barText = h('p', { id: 'progress-text', 'aria-live': 'polite' });
    const fields = h('dl', { class: 'fields', id: 'progress-fields' });
    const timeline = h('ol', { class: 'timeline', id: 'timeline', 'aria-label': 'Events' });
    const result = h('pre', { id: 'result', tabindex: '0', 'aria-label': 'Output or error' }, '—');
    const logs = h('pre', { id: 'logs', tabindex: '0', 'aria-label': 'Logs' }, '—');
    const controls = h('div', { class: 'actions', id: 'controls' });
    const signalArea = h('section', { id: 'signals', 'aria-labelledby': 'signals-h' });
    show(h('section', { class: 'detail' }, heading, facts,
      h('section', { 'aria-labelledby': 'progress-h' }, h('h2', { id: 'progress-h' }, 'Progress'), bar, barText, fields),
      controls, signalArea,
      h('div', { class: 'grid' },
        h('section', {}, h('h2', {}, 'Timeline'), timeline),
        h('section', {}, h('h2', {}, 'Result'), result)),
      h('section', {}, h('h2', {}, 'Logs and outbound requests'), logs)), `Operation ${id}`);

    let current = null;
    let logTimer = null;
    let logSeq = 0;
    let reading = false;
    let readAgain = false;
    // New log lines are read after the last one shown, a page at a time, by one reader at a
    // time; a read asked for meanwhile runs once the current one ends.
    const readLogs = async () => {
      if (reading) { readAgain = true; return; }
      reading = true;
      try {
        do {
          readAgain = false;
          for (;;) {
            const response = await fetch(`/v1/operations/${encodeURIComponent(id)}/logs?after=${logSeq}&limit=1000`, { headers: { Authorization: `Bearer ${token()}` } });
            if (!response.ok) break;
            const lines = (await response.text()).split('\n').filter(Boolean).map((line) => JSON.parse(line));
            if (lines.length === 0) break;
            if (logSeq === 0) logs.textContent = '';
            logs.append(lines.map((line) => `${line.at} ${line.stream}/${line.level} ${line.message}\n`).join(''));
            logSeq = lines[lines.length - 1].seq;
          }
        } while (readAgain);
      } catch (_) { /* the next event reads again */ } finally { reading = false; }
    };
    const refreshLogs = () => {
      clearTimeout(logTimer);
      logTimer = setTimeout(readLogs, 300);
    };
    cleanups.push(() => clearTimeout(logTimer));

    const render = (snapshot) => {
      current = snapshot;
      document.getElementById('state').replaceChildren(stateBadge(snapshot.state));
      facts.textContent = `${snapshot.operation} ${snapshot.version} · attempt ${snapshot.attempt} · created ${when(snapshot.createdAt)}${snapshot.completedAt ? ` · ended ${when(snapshot.completedAt)}` : ''}`;
      const progress = progressOf(snapshot);
      if (progress) { bar.value = progress.value; barText.textContent = progress.label; }
      fields.replaceChildren(...progressFields(snapshot));
      if (snapshot.output !== undefined) result.textContent = pretty(snapshot.output);
      else if (snapshot.error) result.textContent = pretty(snapshot.error);
      const ended = TERMINAL.includes(snapshot.state);
      // The button stays the same element while it is shown, so that focus and a pointer on it
      // survive the updates.
      const cancellable = !ended && allowed(snapshot.operation, 'cancel') && !snapshot.cancelRequested;
      const button = controls.querySelector('#cancel');
      if (cancellable && !button) {
        controls.append(h('button', { type: 'button', class: 'danger', id: 'cancel', onclick: cancel }, 'Cancel operation'));
      } else if (!cancellable && button) {
        button.remove();
      }
      renderSignals(snapshot, signalArea, ended);
    };

    const cancel = async () => {
      if (!await confirmDialog(`Cancel operation ${id}?`)) return;
      try { await api('POST', `/v1/operations/${encodeURIComponent(id)}/cancel`); say(`Cancel requested for ${id}`); } catch (error) { say(`Cannot cancel: ${error.message}`); }
    };

    const mine = view;
    try {
      const snapshot = await api('GET', `/v1/operations/${encodeURIComponent(id)}`);
      if (mine !== view) return;
      render(snapshot);
    } catch (error) {
      if (mine !== view) return;
      show(h('section', {}, h('h1', {}, 'Operation not shown'), h('p', { class: 'error', role: 'alert' }, error.message)), 'Operation');
      return;
    }
    refreshLogs();
    follow(`/v1/operations/${encodeURIComponent(id)}/events?after=0`, (event) => {
      if (event.event === 'error' || !event.data) return;
      const snapshot = JSON.parse(event.data);
      timeline.append(h('li', {}, h('strong', {}, event.event), ` · revision ${snapshot.revision} · ${when(snapshot.updatedAt)}`,
        snapshot.progress && event.event === 'progress' ? ` · ${JSON.stringify(snapshot.progress)}` : ''));
      if (!current || snapshot.revision >= current.revision) render(snapshot);
      refreshLogs();
    });
  }

  // The progress's fields in its schema's order, each named by its title when it has one;
  // fields the schema does not name follow.
  function progressFields(snapshot) {
    const progress = snapshot.progress;
    if (progress === undefined || progress === null) return [];
    if (typeof progress !== 'object') return [h('dt', {}, 'progress'), h('dd', {}, JSON.stringify(progress))];
    const spec = (contract.operations || {})[snapshot.operation] || {};
    const schema = spec.progress ? resolve(spec.progress.schema) : {};
    const properties = schema.properties || {};
    const names = [...Object.keys(properties).filter((name) => name in progress),
      ...Object.keys(progress).filter((name) => !(name in properties))];
    return names.flatMap((name) => {
      const property = resolve(properties[name] || {});
      const value = progress[name];
      const shown = typeof value === 'object' ? JSON.stringify(value) : String(value);
      return [h('dt', { title: property.description || null }, property.title || name), h('dd', { 'data-field': name }, shown)];
    });
  }

  function renderSignals(snapshot, area, ended) {
    const spec = (contract.operations || {})[snapshot.operation] || {};
    const signals = Object.entries(spec.signals || {});
    if (ended || signals.length === 0 || !allowed(snapshot.operation, 'control')) { area.replaceChildren(); return; }
    if (area.dataset.ready) return;
    area.dataset.ready = 'yes';
    const select = h('select', { id: 'signal-name' }, signals.map(([name]) => h('option', { value: name }, name)));
    const input = h('textarea', { id: 'signal-input', spellcheck: 'false', 'aria-describedby': 'signal-problems' }, '{}');
    const problems = h('div', { id: 'signal-problems', role: 'alert' });
    const form = h('form', {},
      h('div', { class: 'field' }, h('label', { for: 'signal-name' }, 'Signal'), select),
      h('div', { class: 'field' }, h('label', { for: 'signal-input' }, 'Input (JSON)'), input),
      problems,
      h('button', { type: 'submit', id: 'send-signal' }, 'Send signal'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      problems.replaceChildren();
      let payload;
      try { payload = JSON.parse(input.value); } catch (error) { problems.append(h('p', { class: 'error' }, `Input is not JSON: ${error.message}`)); return; }
      const signal = spec.signals[select.value] || {};
      const schema = signal.input ? signal.input.schema : null;
      const found = schema ? validate(schema, payload) : [];
      if (found.length) { problems.append(problemList(found)); return; }
      try {
        const sent = await api('POST', `/v1/operations/${encodeURIComponent(snapshot.id)}/signals/${encodeURIComponent(select.value)}`, payload);
        say(`Signal ${select.value} sent (#${sent.sequence})`);
      } catch (error) { problems.append(h('p', { class: 'error' }, error.message)); }
    });
    area.replaceChildren(h('h2', { id: 'signals-h' }, 'Send a signal'), form);
  }

  // ---- Start ----------------------------------------------------------------------------

  function renderStartChoice() {
    const callable = Object.keys(contract.operations || {}).filter((name) => allowed(name, 'call'));
    show(h('section', {}, h('h1', {}, 'Start an operation'),
      callable.length ? h('ul', {}, callable.map((name) => h('li', {}, h('a', { href: `#/start/${encodeURIComponent(name)}` }, name))))
        : h('p', {}, 'This token may start no operation.')), 'Start');
  }

  function renderStart(operation) {
    const spec = (contract.operations || {})[operation];
    if (!spec) { show(h('p', { class: 'error' }, `No operation ${operation}`), 'Start'); return; }
    const schema = spec.input ? spec.input.schema : {};
    const root = editor(schema, [], 'Input', true);
    const key = h('input', { type: 'text', id: 'start-key', autocomplete: 'off', 'aria-describedby': 'start-key-help' });
    const problems = h('div', { id: 'start-problems', role: 'alert' });
    // The schema's own check below names each problem's JSON path; the browser's would not.
    const form = h('form', { id: 'start-form', novalidate: true },
      root.element,
      h('div', { class: 'field' }, h('label', { for: 'start-key' }, 'Operation id (optional)'), key,
        h('span', { class: 'muted', id: 'start-key-help' }, ' Sent as Idempotency-Key: starting twice with one id starts once.')),
      problems,
      h('button', { type: 'submit', class: 'primary', id: 'start' }, `Start ${operation}`));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      problems.replaceChildren();
      let input;
      try { input = root.read(); } catch (error) { problems.append(h('p', { class: 'error' }, error.message)); return; }
      const found = validate(schema, input);
      if (found.length) { problems.append(problemList(found)); return; }
      try {
        const headers = key.value.trim() ? { 'Idempotency-Key': key.value.trim() } : {};
        const started = await api('POST', `/v1/operations/${encodeURIComponent(operation)}`, input, headers);
        location.hash = `#/operations/${encodeURIComponent(started.id)}`;
      } catch (error) {
        problems.append(h('p', { class: 'error' }, error.message));
        if (error.info && error.info.details) problems.append(h('pre', {}, pretty(error.info.details)));
      }
    });
    show(h('section', {}, h('h1', {}, `Start ${operation}`), form), `Start ${operation}`);
  }

  // ---- Jobs -----------------------------------------------------------------------------

  function jobFilters() {
    const params = new URLSearchParams(location.hash.split('?')[1] || '');
    return { queue: params.get('queue') || '', state: params.get('state') || '', after: params.get('after') || '' };
  }

  async function renderJobs() {
    if (!me.admin) { show(h('section', {}, h('h1', {}, 'Jobs'), h('p', {}, 'Jobs need the host\'s admin capability.')), 'Jobs'); return; }
    const filters = jobFilters();
    const queues = Object.keys(contract.queues || {});
    const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs' },
      h('label', { for: 'job-queue' }, 'Queue', h('select', { id: 'job-queue', name: 'queue' }, h('option', { value: '' }, 'Any'),
        queues.map((name) => h('option', { value: name, selected: filters.queue === name }, name)))),
      h('label', { for: 'job-state' }, 'State', h('select', { id: 'job-state', name: 'state' }, h('option', { value: '' }, 'Any'),
        JOB_STATES.map((state) => h('option', { value: state, selected: filters.state === state }, state)))),
      h('button', { type: 'submit', class: 'primary' }, 'Apply'),
      h('button', { type: 'button', id: 'retry-dead', onclick: () => retryDead(document.getElementById('job-queue').value) }, 'Retry all dead…'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const chosen = {};
      for (const [key, value] of new FormData(form)) if (value) chosen[key] = value;
      location.hash = `#/jobs?${new URLSearchParams(chosen)}`;
    });
    const rows = h('tbody', { id: 'job-rows' });
    const base = { queue: filters.queue, state: filters.state };
    const to = (after) => { location.hash = `#/jobs?${new URLSearchParams(Object.fromEntries(Object.entries({ ...base, after }).filter(([, v]) => v)))}`; };
    const next = h('button', { type: 'button', id: 'jobs-next', disabled: true }, 'Next page');
    const first = h('button', { type: 'button', id: 'jobs-first', disabled: !filters.after, onclick: () => to('') }, 'First page');
    show(h('section', {}, h('h1', {}, 'Jobs'), form,
      h('table', { id: 'jobs' }, h('caption', {}, 'Jobs, refreshed every 2 s'),
        h('thead', {}, h('tr', {}, ['Id', 'Queue', 'State', 'Attempts', 'Last error', 'Updated', 'Actions'].map((name) => h('th', { scope: 'col' }, name)))),
        rows),
      h('div', { class: 'pager' }, first, next)), 'Jobs');
    const act = async (job, action) => {
      try { await api('POST', `/v1/jobs/${encodeURIComponent(job.id)}/${action}`); say(`${action === 'retry' ? 'Retried' : 'Cancelled'} job ${job.id}`); load(); } catch (error) { say(`Cannot ${action} ${job.id}: ${error.message}`); }
    };
    let shown = null;
    const load = async () => {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (filters.queue) query.set('queue', filters.queue);
      if (filters.state) query.set('state', filters.state);
      if (filters.after) query.set('after', filters.after);
      try {
        const page = await api('GET', `/v1/jobs?${query}`);
        next.disabled = !page.next;
        next.onclick = () => to(page.next);
        // Rows are rebuilt only when a job changed, so that focus on a button survives.
        const seen = JSON.stringify(page.items.map((job) => [job.id, job.state, job.attempt, job.updatedAt]));
        if (seen === shown) return;
        shown = seen;
        rows.replaceChildren(...page.items.map((job) => h('tr', { 'data-id': job.id, 'data-state': job.state },
          h('td', { class: 'mono' }, job.id),
          h('td', {}, job.queue),
          h('td', {}, stateBadge(job.state)),
          h('td', {}, `${job.attempt} of ${job.maxAttempts}`),
          h('td', {}, job.error ? job.error.message : ''),
          h('td', {}, when(job.updatedAt)),
          h('td', {},
            ['dead', 'cancelled'].includes(job.state) ? h('button', { type: 'button', class: 'retry', onclick: () => act(job, 'retry') }, `Retry job ${job.id}`) : null,
            ['queued', 'running'].includes(job.state) ? h('button', { type: 'button', class: 'cancel', onclick: () => act(job, 'cancel') }, `Cancel job ${job.id}`) : null))));
        if (page.items.length === 0) rows.append(h('tr', {}, h('td', { colspan: '7', class: 'muted' }, 'No jobs match.')));
      } catch (error) {
        shown = null;
        rows.replaceChildren(h('tr', {}, h('td', { colspan: '7', class: 'error' }, error.message)));
      }
    };
    const mine = view;
    await load();
    if (mine !== view) return;
    const timer = setInterval(() => { if (!document.querySelector('dialog[open]')) load(); }, 2000);
    cleanups.push(() => clearInterval(timer));
  }

  async function retryDead(queue) {
    const dead = [];
    try {
      let after = null;
      do {
        const query = new URLSearchParams({ state: 'dead' });
        if (queue) query.set('queue', queue);
        if (after) query.set('after', after);
        const page = await api('GET', `/v1/jobs?${query}`);
        dead.push(...page.items.map((job) => job.id));
        after = page.next;
      } while (after);
    } catch (error) {
      say(`Cannot list the dead jobs: ${error.message}`);
      return;
    }
    if (dead.length === 0) { say('No dead job to retry.'); return; }
    const where = queue ? ` in ${queue}` : '';
    if (!await confirmDialog(`Retry ${dead.length} dead ${dead.length === 1 ? 'job' : 'jobs'}${where}?`)) return;
    let done = 0;
    for (const id of dead) {
      try { await api('POST', `/v1/jobs/${encodeURIComponent(id)}/retry`); done += 1; } catch (_) { /* counted below */ }
    }
    say(`Retried ${done} of ${dead.length} dead jobs${where}`);
  }

  // ---- Routing --------------------------------------------------------------------------

  async function route() {
    view += 1;
    for (const cleanup of cleanups.splice(0)) cleanup();
    const [path] = (location.hash || '#/operations').slice(1).split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    if (!token()) { renderSignIn(); return; }
    if (!me) {
      try { await loadSession(); } catch (error) { signOut(`Signed out: ${error.message}`); return; }
    }
    for (const link of document.querySelectorAll('[data-nav]')) {
      if (link.dataset.nav === (parts[0] || 'operations')) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    if (parts[0] === 'operations' && parts[1]) return renderOperation(parts[1]);
    if (parts[0] === 'start' && parts[1]) return renderStart(parts[1]);
    if (parts[0] === 'start') return renderStartChoice();
    if (parts[0] === 'jobs') return renderJobs();
    if (parts[0] === 'signin') { location.hash = '#/operations'; return undefined; }
    return renderOperations();
  }

  document.getElementById('sign-out').addEventListener('click', () => signOut('Signed out'));
  // The skip link moves the focus; it must not change the route.
  document.querySelector('.skip').addEventListener('click', (event) => {
    event.preventDefault();
    main.focus();
  });
  window.addEventListener('hashchange', route);
  route();
})();
