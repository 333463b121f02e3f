import { defineContract, z } from 'evolith';
import { CodedMessage } from './coded-message.js';
import { optionalText, positiveId as id, requiredNumber, requiredText, wholeNumber } from './fields.js';

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
  title: requiredText('title', 200),
  price: requiredNumber('price').min(0, 'price must not be negative').max(1_000_000, 'price must be at most 1000000'),
  rate: z.number({ error: 'rate must be a number' }).min(0, 'rate must be between 0 and 10').max(10, 'rate must be between 0 and 10').default(0),
  description: optionalText('description', 5000),
  cover: optionalText('cover', 500),
  detail: optionalText('detail', 500),
  specifications: z
    .array(
      z.object({
        item: requiredText('specification item', 100),
        value: z.string({ error: 'specification value must be text' }).max(500, 'specification value must be at most 500 characters'),
      }),
      { error: 'specifications must be a list' },
    )
    .default([]),
});

export const Stockpile = z.object({ id: z.number().int(), amount: z.number().int(), frozen: z.number().int(), productId: z.number().int() });
export const Advertisement = z.object({ id: z.number().int(), image: z.string(), productId: z.number().int() });

export const HoldState = z.enum(['FROZEN', 'RELEASED', 'CONSUMED']);
const HoldItem = z.object({ productId: id('productId'), amount: wholeNumber('amount').min(1, 'amount must be at least 1').max(1_000_000, 'amount must be at most 1000000') });
/** Stock set aside for one payment (repeated products summed), and what became of it. */
export const StockHold = z.object({
  payId: z.string(),
  state: HoldState,
  items: z.array(z.object({ productId: z.number().int(), amount: z.number().int() })),
});
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
    prices: {
      input: z.object({ ids: z.array(id('product id')).min(1).max(500) }),
      output: z.array(z.object({ id: z.number().int(), price: z.number().min(0) })),
      idempotent: true,
      description: 'The current price of each existing product among the ids (what a settlement needs, and no more).',
    },
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
        amount: wholeNumber('amount').min(0, 'amount must not be negative').max(1_000_000_000, 'amount must be at most 1000000000'),
      }),
      output: CodedMessage,
      roles: ['ROLE_ADMIN'],
      idempotent: true,
      description: 'Sets the amount on sale; frozen stock is not touched.',
    },
    freeze: {
      input: PayId.extend({ items: z.array(HoldItem).min(1, 'at least one item is required').max(100, 'at most 100 items may be frozen at once') }),
      output: StockHold,
      // Only the payment service freezes stock, on behalf of the user who settles.
      internal: true,
      idempotent: true,
      description: 'Moves stock from amount to frozen for every item or for none; repeating a payId changes nothing.',
    },
    release: {
      input: PayId,
      output: StockHold,
      internal: true,
      idempotent: true,
      description: 'Returns the frozen stock of a payment to sale. Normally driven by payment events.',
    },
    consume: {
      input: PayId,
      output: StockHold,
      internal: true,
      idempotent: true,
      description: 'Removes the frozen stock of a paid payment. Normally driven by payment events.',
    },
  },
});
