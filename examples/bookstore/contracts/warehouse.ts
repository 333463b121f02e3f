import { defineContract, z } from 'evolith';
import { CodedMessage } from './coded-message.js';

const id = (what: string) =>
  z.number({ error: `${what} must be a number` }).int(`${what} must be a whole number`).positive(`${what} must be positive`);

export const Specification = z.object({ id: z.number().int(), item: z.string(), value: z.string(), productId: z.number().int() });

export const Product = z.object({
  id: z.number().int(),
  title: z.string(),
  price: z.number(),
  rate: z.number(),
  description: z.string().nullable(),
  cover: z.string().nullable(),
  detail: z.string().nullable(),
  specifications: z.array(Specification),
});
export type Product = z.infer<typeof Product>;

/** What an administrator writes; ids of specifications are assigned by the service. */
const ProductFields = z.object({
  title: z.string({ error: 'title is required' }).trim().min(1, 'title is required').max(200, 'title must be at most 200 characters'),
  price: z.number({ error: 'price is required and must be a number' }).min(0, 'price must not be negative').max(1_000_000, 'price must be at most 1000000'),
  rate: z.number({ error: 'rate must be a number' }).min(0, 'rate must be between 0 and 10').max(10, 'rate must be between 0 and 10').default(0),
  description: z.string().max(5000, 'description must be at most 5000 characters').nullish(),
  cover: z.string().max(500, 'cover must be at most 500 characters').nullish(),
  detail: z.string().max(500, 'detail must be at most 500 characters').nullish(),
  specifications: z
    .array(
      z.object({
        item: z.string({ error: 'specification item is required' }).trim().min(1, 'specification item is required').max(100),
        value: z.string({ error: 'specification value is required' }).max(500),
      }),
    )
    .default([]),
});

export const Stockpile = z.object({ id: z.number().int(), amount: z.number().int(), frozen: z.number().int(), productId: z.number().int() });
export const Advertisement = z.object({ id: z.number().int(), image: z.string(), productId: z.number().int() });

export const HoldState = z.enum(['FROZEN', 'RELEASED', 'CONSUMED']);
const HoldItem = z.object({ productId: id('productId'), amount: z.number().int('amount must be a whole number').min(1, 'amount must be at least 1') });
/** Stock set aside for one payment, and what became of it. */
export const StockHold = z.object({ payId: z.string(), state: HoldState, items: z.array(HoldItem) });
const PayId = z.object({ payId: z.string().min(1, 'payId is required').max(64, 'payId must be at most 64 characters') });

export const warehouseContract = defineContract({
  name: 'warehouse',
  version: '1.0.0',
  description: 'Products, their specifications and advertisements, and the stockpile behind them.',
  methods: {
    listProducts: {
      input: z.object({ ids: z.array(id('product id')).max(500).optional() }),
      output: z.array(Product),
      idempotent: true,
      description: 'Every product, or those with the given ids.',
    },
    getProduct: { input: z.object({ id: id('id') }), output: Product.nullable(), idempotent: true },
    createProduct: { input: ProductFields, output: Product, roles: ['ROLE_ADMIN'], description: 'Adds a product with an empty stockpile.' },
    updateProduct: {
      input: ProductFields.extend({ id: id('id') }),
      output: CodedMessage,
      roles: ['ROLE_ADMIN'],
      idempotent: true,
      description: 'Replaces a product and its specifications.',
    },
    removeProduct: { input: z.object({ id: id('id') }), output: CodedMessage, roles: ['ROLE_ADMIN'], idempotent: true },
    listAdvertisements: { input: z.object({}), output: z.array(Advertisement), idempotent: true },
    getStockpile: { input: z.object({ productId: id('productId') }), output: Stockpile.nullable(), roles: ['ROLE_ADMIN'], idempotent: true },
    setStockpile: {
      input: z.object({
        productId: id('productId'),
        amount: z.number({ error: 'amount is required and must be a number' }).int('amount must be a whole number').min(0, 'amount must not be negative'),
      }),
      output: CodedMessage,
      roles: ['ROLE_ADMIN'],
      idempotent: true,
      description: 'Sets the amount on sale; frozen stock is not touched.',
    },
    freeze: {
      input: PayId.extend({ items: z.array(HoldItem).min(1, 'at least one item is required') }),
      output: StockHold,
      // Called by the payment service on behalf of the user who settles, whose identity it carries.
      roles: ['ROLE_USER'],
      idempotent: true,
      description: 'Moves stock from amount to frozen for every item or for none; repeating a payId changes nothing.',
    },
    release: {
      input: PayId,
      output: StockHold,
      roles: ['ROLE_ADMIN'],
      idempotent: true,
      description: 'Returns the frozen stock of a payment to sale. Normally driven by payment events.',
    },
    consume: {
      input: PayId,
      output: StockHold,
      roles: ['ROLE_ADMIN'],
      idempotent: true,
      description: 'Removes the frozen stock of a paid payment. Normally driven by payment events.',
    },
  },
});
