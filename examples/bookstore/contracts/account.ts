import { defineContract, z } from 'evolith';
import { CodedMessage } from './coded-message.js';
import { optionalText as optional, requiredText as required, username } from './fields.js';

/** The fields a client may write. Uniqueness of username, telephone and email is checked by the service. */
const AccountFields = z.object({
  username: username(50),
  name: required('name', 50),
  avatar: optional('avatar', 500),
  telephone: z.string({ error: 'telephone must be text' }).regex(/^1\d{10}$/, 'telephone must be 11 digits starting with 1').nullish(),
  email: z.email({ error: 'email is not a valid address' }).max(100, 'email must be at most 100 characters').nullish(),
  location: optional('location', 200),
});

/**
 * As in Fenix, the password may be left out: the account is created with an empty one, which
 * no sign-in ever matches.
 */
export const NewAccount = AccountFields.extend({ password: optional('password', 200) });

/**
 * A PUT carries the whole account; fields left out keep their value. A password in it is
 * ignored, as in Fenix (the column is not updatable): PUT /restful/accounts/password changes it.
 */
export const AccountChange = AccountFields.extend({ password: optional('password', 200) });

/** What anyone may read about an account; the password is write-only. */
export const Account = z.object({
  id: z.number().int(),
  username: z.string(),
  name: z.string(),
  avatar: z.string().nullable(),
  telephone: z.string().nullable(),
  email: z.string().nullable(),
  location: z.string().nullable(),
});
export type Account = z.infer<typeof Account>;

export const accountContract = defineContract({
  name: 'account',
  version: '1.0.0',
  description: 'Bookstore accounts: profile data. Credentials live in the auth service.',
  methods: {
    create: {
      input: NewAccount,
      output: CodedMessage,
      description: 'Registers an account and its credentials (role ROLE_USER).',
    },
    update: {
      input: AccountChange,
      output: CodedMessage,
      roles: ['ROLE_USER'],
      description: 'Changes the signed-in account; nobody else may change it.',
    },
    getByUsername: {
      // Any name an account may have, those registered before today's rules included; no
      // control characters, which no account has (and PostgreSQL cannot even compare).
      input: z.object({
        username: z
          .string()
          .min(1, 'username is required')
          .max(200, 'username must be at most 200 characters')
          .refine((name) => !/[\p{Cc}\p{Cs}]/u.test(name), 'username must not contain control characters'),
      }),
      output: Account.nullable(),
      idempotent: true,
    },
  },
});
