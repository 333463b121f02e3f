import { defineContract, z } from 'evolith';
import { CodedMessage } from './coded-message.js';
import { positiveId, requiredText, wholeNumber } from './fields.js';

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

const text = (field: string) => requiredText(field, 200);

export const Settlement = z.object({
  items: z
    .array(
      z.object({
        id: positiveId('item id'),
        amount: wholeNumber('item amount').min(1, 'item amount must be at least 1').max(10_000, 'item amount must be at most 10000'),
      }),
      { error: 'items are required' },
    )
    .min(1, 'a settlement needs at least one item')
    .max(100, 'a settlement holds at most 100 items'),
  purchase: z.object(
    {
      delivery: z.boolean({ error: (issue) => (issue.input === undefined ? 'purchase.delivery is required' : 'purchase.delivery must be true or false') }),
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
        accountId: positiveId('accountId'),
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
