import { defineApp, route } from 'evolith';
import { accountContract } from './contracts/account.js';
import { authContract, tokenIssuer } from './contracts/auth.js';
import { paymentContract } from './contracts/payment.js';
import { warehouseContract } from './contracts/warehouse.js';
import { first, numeric, oauthError, retryLater, tokenRequest } from './edge-input.js';
import { accountService } from './services/account.js';
import { authService } from './services/auth.js';
import { paymentService } from './services/payment.js';
import { warehouseService } from './services/warehouse.js';

const { token, jwks, checkToken, changePassword } = authContract.methods;
const account = accountContract.methods;
const warehouse = warehouseContract.methods;
const payment = paymentContract.methods;

// Token responses carry credentials: never cached (RFC 6749 §5.1).
const noStore = <T>(body: T) => ({ status: 200, body, headers: { 'cache-control': 'no-store', pragma: 'no-cache' } });

/** The bookstore: the public HTTP API of Fenix's Bookstore, mapped onto four services. */
export default defineApp({
  name: 'bookstore',
  services: [accountService, authService, warehouseService, paymentService],
  edge: {
    routes: [
      route('GET /oauth/token', token, { input: (req) => tokenRequest(req.query, req), reply: noStore, error: oauthError }),
      route('POST /oauth/token', token, { input: (req) => tokenRequest(req.body, req), reply: noStore, error: oauthError }),
      route('GET /.well-known/jwks.json', jwks, { input: () => ({}) }),

      route('GET /restful/accounts/:username', account.getByUsername, { input: (req) => ({ username: req.params.username! }) }),
      route('POST /restful/accounts', account.create),
      route('PUT /restful/accounts', account.update),
      route('PUT /restful/accounts/password', changePassword, { error: retryLater }),

      route('GET /restful/advertisements', warehouse.listAdvertisements, { input: () => ({}) }),
      route('GET /restful/products', warehouse.listProducts, { input: () => ({}) }),
      route('GET /restful/products/:id', warehouse.getProduct, { input: (req) => ({ id: numeric(req.params.id) }) }),
      route('POST /restful/products', warehouse.createProduct),
      route('PUT /restful/products', warehouse.updateProduct),
      route('DELETE /restful/products/:id', warehouse.removeProduct, { input: (req) => ({ id: numeric(req.params.id) }) }),
      route('GET /restful/products/stockpile/:productId', warehouse.getStockpile, { input: (req) => ({ productId: numeric(req.params.productId) }) }),
      route('PATCH /restful/products/stockpile/:productId', warehouse.setStockpile, {
        input: (req) => ({ productId: numeric(req.params.productId), amount: numeric(req.query.amount) }),
      }),

      route('POST /restful/settlements', payment.settle),
      route('PATCH /restful/pay/:payId', payment.updateState, {
        input: (req) => ({ payId: req.params.payId!, state: first(req.query.state) as 'PAYED' | 'CANCEL' }),
      }),
      route('GET /restful/pay/modify/:payId', payment.payByLink, {
        input: (req) => ({ payId: req.params.payId!, state: first(req.query.state) as 'PAYED' | 'CANCEL', accountId: numeric(req.query.accountId) }),
      }),
    ],
    static: { dir: 'public', fallback: 'index.html' },
    auth: { jwks, issuer: tokenIssuer, active: checkToken },
  },
});
