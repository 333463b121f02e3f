import { defineContract, z } from 'evolith';
import { CodedMessage } from './coded-message.js';

export const PayState = z.enum(['WAITING', 'CANCEL', 'PAYED', 'TIMEOUT']);
export type PayState = z.infer<typeof PayState>;

export const Payment = z.object({
  id: z.number().int(),
  /** ISO-8601 instant. */
  createTime: z.string(),
  payId: z.string(),
  totalPrice: z.number(),
  /** How long the payment waits, in milliseconds, before it times out and its stock is released. */
  expires: z.number().int(),
  paymentLink: z.string(),
  payState: PayState,
});
export type Payment = z.infer<typeof Payment>;

const text = (field: string) =>
  z
    .string({ error: `${field} is required` })
    .trim()
    .min(1, `${field} is required`)
    .max(200, `${field} must be at most 200 characters`);

export const Settlement = z.object({
  items: z
    .array(
      z.object({
        id: z.number({ error: 'every item needs a product id' }).int('product id must be a whole number').positive('product id must be positive'),
        amount: z.number({ error: 'every item needs an amount' }).int('amount must be a whole number').min(1, 'amount must be at least 1'),
      }),
      { error: 'items are required' },
    )
    .min(1, 'a settlement needs at least one item')
    .max(100, 'a settlement holds at most 100 items'),
  purchase: z.object(
    {
      delivery: z.boolean().default(true),
      pay: text('purchase.pay'),
      name: text('purchase.name'),
      telephone: text('purchase.telephone'),
      location: text('purchase.location'),
    },
    { error: 'purchase (delivery details) is required' },
  ),
});

const PayTarget = z.enum(['PAYED', 'CANCEL'], { error: 'state must be PAYED or CANCEL' });
const payIdField = z.string().min(1, 'payId is required').max(64, 'payId must be at most 64 characters');
const PaymentEvent = z.object({ payId: z.string() });

export const paymentContract = defineContract({
  name: 'payment',
  version: '1.0.0',
  description: 'Settlements, payments and wallets.',
  methods: {
    settle: {
      input: Settlement,
      output: Payment,
      roles: ['ROLE_USER'],
      description: 'Prices the items, freezes their stock and opens a payment that waits for the buyer.',
    },
    updateState: {
      input: z.object({ payId: payIdField, state: PayTarget }),
      output: CodedMessage,
      roles: ['ROLE_USER'],
      description: 'The signed-in buyer pays (from their wallet) or cancels a waiting payment.',
    },
    payByLink: {
      input: z.object({
        payId: payIdField,
        state: PayTarget,
        accountId: z.number({ error: 'accountId is required and must be a number' }).int().positive('accountId must be positive'),
      }),
      output: CodedMessage,
      description: 'The payment link opened from a QR code: acts for the account named in the link.',
    },
  },
  events: {
    paid: PaymentEvent,
    cancelled: PaymentEvent,
    timedOut: PaymentEvent,
    /** Internal durable timer: fires at a payment's expiry; only the payment service listens. */
    expired: PaymentEvent,
  },
});
