// The bookstore's front page: plain browser JavaScript against the public HTTP API.
const CLIENT = { client_id: 'bookstore_frontend', client_secret: 'bookstore_secret' };
const $ = (selector) => document.querySelector(selector);
let session = JSON.parse(sessionStorage.getItem('bookstore.session') ?? 'null');
let current; // the product shown in the dialog

async function api(path, { method = 'GET', body, form, anonymous = false } = {}) {
  const headers = {};
  if (session && !anonymous) headers.authorization = `bearer ${session.access_token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (form) headers['content-type'] = 'application/x-www-form-urlencoded';
  const res = await fetch(path, { method, headers, body: form ? new URLSearchParams(form) : body === undefined ? undefined : JSON.stringify(body) });
  // An expired token: forget it and ask again as a guest (public pages still work).
  if (res.status === 401 && session && !anonymous) {
    signOut();
    return api(path, { method, body, form, anonymous: true });
  }
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.message ?? data?.error_description ?? `${res.status} ${res.statusText}`);
  return data;
}

function say(text, isError = false) {
  const box = $('#message');
  box.textContent = text;
  box.classList.toggle('error', isError);
  box.hidden = false;
}

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c !== undefined && c !== null));
  return node;
}

function showSession() {
  $('#sign-in').hidden = !!session;
  $('#signed-in').hidden = !session;
  $('#who').textContent = session ? `Signed in as ${session.username}` : '';
}

async function signIn(event) {
  event.preventDefault();
  const { username, password } = Object.fromEntries(new FormData(event.target));
  try {
    session = await api('/oauth/token', { method: 'POST', form: { grant_type: 'password', username, password, ...CLIENT }, anonymous: true });
    sessionStorage.setItem('bookstore.session', JSON.stringify(session));
    showSession();
    say(`Welcome, ${session.username}.`);
  } catch (err) {
    say(`Sign-in failed: ${err.message}`, true);
  }
}

function signOut() {
  session = null;
  sessionStorage.removeItem('bookstore.session');
  showSession();
}

async function showAds() {
  const ads = await api('/restful/advertisements');
  $('#ads').replaceChildren(
    ...ads.map((ad) => {
      const link = element('a', { href: `#product-${ad.productId}` }, element('img', { src: ad.image, alt: 'Advertisement' }));
      link.addEventListener('click', () => openProduct(ad.productId));
      return link;
    }),
  );
}

async function showProducts() {
  const products = await api('/restful/products');
  $('#products').replaceChildren(
    ...products.map((p) => {
      const button = element(
        'button',
        { type: 'button' },
        element('img', { src: p.cover ?? '/images/logo.svg', alt: `Cover of ${p.title}`, loading: 'lazy' }),
        element('h2', { textContent: p.title }),
        element('span', { className: 'price', textContent: `¥${p.price.toFixed(2)}` }),
        element('span', { className: 'rate', textContent: `★ ${p.rate.toFixed(1)}` }),
      );
      button.addEventListener('click', () => openProduct(p.id));
      return element('li', {}, button);
    }),
  );
}

async function openProduct(id) {
  current = await api(`/restful/products/${id}`);
  if (!current) return say(`Product ${id} is no longer sold.`, true);
  const specs = element('table', {}, ...current.specifications.map((s) => element('tr', {}, element('th', { textContent: s.item }), element('td', { textContent: s.value }))));
  $('#product-body').replaceChildren(
    element('h2', { textContent: current.title }),
    element('p', {}, element('span', { className: 'price', textContent: `¥${current.price.toFixed(2)}` }), element('span', { className: 'rate', textContent: `★ ${current.rate.toFixed(1)}` })),
    element('img', { src: current.detail ?? current.cover, alt: `Details of ${current.title}` }),
    element('p', { textContent: current.description ?? '' }),
    specs,
  );
  $('#payment').hidden = true;
  $('#buy').hidden = !session;
  if (session) {
    const me = await api(`/restful/accounts/${encodeURIComponent(session.username)}`).catch(() => null);
    const form = $('#buy');
    form.name.value ||= me?.name ?? '';
    form.telephone.value ||= me?.telephone ?? '';
    form.location.value ||= me?.location ?? '';
  }
  $('#product').showModal();
}

async function settle(event) {
  event.preventDefault();
  const f = Object.fromEntries(new FormData(event.target));
  try {
    const payment = await api('/restful/settlements', {
      method: 'POST',
      body: { items: [{ id: current.id, amount: Number(f.amount) }], purchase: { delivery: true, pay: f.pay, name: f.name, telephone: f.telephone, location: f.location } },
    });
    showPayment(payment);
  } catch (err) {
    say(`Settlement refused: ${err.message}`, true);
  }
}

function showPayment(payment) {
  const deadline = Date.parse(payment.createTime) + payment.expires;
  const left = element('span');
  const tick = () => (left.textContent = `${Math.max(0, Math.round((deadline - Date.now()) / 1000))} s left to pay`);
  tick();
  const timer = setInterval(tick, 1000);
  const act = (state) => async () => {
    try {
      const r = await api(`/restful/pay/${payment.payId}?state=${state}`, { method: 'PATCH' });
      clearInterval(timer);
      $('#payment').hidden = true;
      say(r.message);
    } catch (err) {
      say(err.message, true);
    }
  };
  const pay = element('button', { type: 'button', textContent: 'Pay now' });
  pay.addEventListener('click', act('PAYED'));
  const cancel = element('button', { type: 'button', className: 'secondary', textContent: 'Cancel' });
  cancel.addEventListener('click', act('CANCEL'));
  const box = $('#payment');
  box.replaceChildren(element('strong', { textContent: `Total ¥${payment.totalPrice.toFixed(2)} (shipping included)` }), left, pay, cancel);
  box.hidden = false;
}

$('#sign-in').addEventListener('submit', signIn);
$('#sign-out').addEventListener('click', signOut);
$('#buy').addEventListener('submit', settle);
showSession();
Promise.all([showAds(), showProducts()]).catch((err) => say(`The bookstore did not answer: ${err.message}`, true));
