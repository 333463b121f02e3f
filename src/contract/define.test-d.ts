import { describe, expectTypeOf, test } from 'vitest';
import { z } from 'zod';
import type { HandlerInput, HandlerOutput, MethodInput, MethodOutput } from './define.js';
import { defineContract } from './define.js';
import { implement, type Client, type ServiceContext } from '../kernel/service.js';

const greeter = defineContract({
  name: 'greeter',
  version: '1.0.0',
  methods: {
    hello: { input: z.object({ name: z.string() }), output: z.object({ text: z.string(), n: z.number() }) },
    page: {
      input: z.object({ size: z.number().default(10), q: z.string().optional() }),
      output: z.object({ at: z.string().transform((s) => new Date(s)) }),
    },
  },
  events: { greeted: z.object({ name: z.string() }) },
});

const other = defineContract({
  name: 'other',
  version: '1.0.0',
  methods: { ping: { input: z.object({}), output: z.literal('pong') } },
});

declare const client: Client<typeof greeter>;

describe('Client<typeof contract>', () => {
  test('input and output types come from the schemas', () => {
    expectTypeOf(client.hello).parameter(0).toEqualTypeOf<{ name: string }>();
    expectTypeOf(client.hello).returns.resolves.toEqualTypeOf<{ text: string; n: number }>();
  });

  test('a wrong input type does not compile', () => {
    // @ts-expect-error name must be a string
    void client.hello({ name: 42 });
    // @ts-expect-error name is required
    void client.hello({});
    // @ts-expect-error the input is an object, not a string
    void client.hello('bob');
  });

  test('a wrong output type does not compile', () => {
    // @ts-expect-error text is a string, not a number
    expectTypeOf(client.hello).returns.resolves.toEqualTypeOf<{ text: number; n: number }>();
    const use = async () => {
      const out = await client.hello({ name: 'a' });
      // @ts-expect-error text is a string
      const n: number = out.text;
      // @ts-expect-error no such output field
      void out.missing;
      return n;
    };
    void use;
  });

  test('an unknown method does not exist on the client', () => {
    // @ts-expect-error greeter has no method goodbye
    void client.goodbye;
    expectTypeOf(client).not.toHaveProperty('goodbye');
    expectTypeOf<keyof typeof client>().toEqualTypeOf<'hello' | 'page'>();
  });

  test('callers see the schema input (defaults optional); handlers see the parsed output', () => {
    expectTypeOf<MethodInput<typeof greeter.methods.page>>().toEqualTypeOf<{ size?: number | undefined; q?: string | undefined }>();
    expectTypeOf<HandlerInput<typeof greeter.methods.page>>().toEqualTypeOf<{ size: number; q?: string | undefined }>();
    expectTypeOf<MethodOutput<typeof greeter.methods.page>>().toEqualTypeOf<{ at: Date }>();
    expectTypeOf<HandlerOutput<typeof greeter.methods.page>>().toEqualTypeOf<{ at: string }>();
  });
});

describe('implement()', () => {
  test('handlers receive typed input and context', () => {
    implement(greeter, {
      handlers: {
        async hello(input, ctx) {
          expectTypeOf(input).toEqualTypeOf<{ name: string }>();
          expectTypeOf(ctx).toEqualTypeOf<ServiceContext<Record<string, never>>>();
          const pong = await ctx.client(other).ping({});
          expectTypeOf(pong).toEqualTypeOf<'pong'>();
          return { text: `hello ${input.name}`, n: 1 };
        },
        async page(input) {
          expectTypeOf(input.size).toEqualTypeOf<number>();
          return { at: new Date(0).toISOString() };
        },
      },
    });
  });

  test('a handler returning the wrong shape does not compile', () => {
    implement(greeter, {
      handlers: {
        // @ts-expect-error text must be a string
        async hello() {
          return { text: 1, n: 1 };
        },
        async page() {
          return { at: 'x' };
        },
      },
    });
    implement(greeter, {
      handlers: {
        // @ts-expect-error n is missing
        async hello() {
          return { text: 'x' };
        },
        // @ts-expect-error page returns the output schema's input (a string), not a Date
        async page() {
          return { at: new Date() };
        },
      },
    });
  });

  test('a missing handler or an unknown one does not compile', () => {
    implement(greeter, {
      // @ts-expect-error page has no handler
      handlers: {
        async hello() {
          return { text: 'x', n: 1 };
        },
      },
    });
    implement(other, {
      handlers: {
        async ping() {
          return 'pong' as const;
        },
        // @ts-expect-error other has no method pang
        async pang() {
          return 'pong' as const;
        },
      },
    });
  });

  test('emitting an event checks its payload type', () => {
    implement(other, {
      handlers: {
        async ping(_input, ctx) {
          await ctx.emit(greeter.events.greeted, { name: 'x' });
          // @ts-expect-error name must be a string
          await ctx.emit(greeter.events.greeted, { name: 1 });
          await ctx.transaction(async (tx) => {
            // @ts-expect-error payload misses name
            await tx.emit(greeter.events.greeted, {});
          });
          return 'pong' as const;
        },
      },
    }).on(greeter.events.greeted, async (payload) => {
      expectTypeOf(payload).toEqualTypeOf<{ name: string }>();
    });
  });
});
