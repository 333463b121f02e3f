import { defineContract, z } from 'evolith';

/** What the greeter answers. A title names the schema in `evolith contracts`. */
export const Greeting = z.object({ message: z.string(), count: z.number().int() }).meta({ title: 'Greeting' });

/** The greeter's contract: what callers may ask and what they get back, checked on every call. */
export const greeterContract = defineContract({
  name: 'greeter',
  version: '1.0.0',
  description: 'Greets people and counts how often it greeted each.',
  methods: {
    hello: {
      input: z.object({ name: z.string().trim().min(1, 'name is required').max(40, 'name must be at most 40 characters') }),
      output: Greeting,
      description: 'Greets someone and counts the greeting.',
    },
    greetings: {
      input: z.object({ name: z.string() }),
      output: z.object({ name: z.string(), count: z.number().int() }),
      idempotent: true,
      description: 'How often someone was greeted.',
    },
  },
  events: {
    greeted: z.object({ name: z.string(), count: z.number().int() }),
  },
});
