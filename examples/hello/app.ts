import { defineApp, route } from 'evolith';
import { greeterContract } from './contracts/greeter.js';
import { greeter } from './services/greeter.js';

export default defineApp({
  name: 'hello',
  services: [greeter],
  edge: {
    routes: [
      // The body (and path parameters) are the method's input; invalid input is answered with 400.
      route('POST /greetings', greeterContract.methods.hello),
      route('GET /greetings/:name', greeterContract.methods.greetings),
    ],
  },
});
