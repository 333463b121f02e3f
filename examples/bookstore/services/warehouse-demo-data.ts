/**
 * The catalogue a fresh bookstore starts with. Descriptions are our own; the pictures under
 * /images are drawn for this example (public/images).
 */
export interface DemoProduct {
  title: string;
  price: number;
  rate: number;
  description: string;
  specifications: [item: string, value: string][];
  stock: number;
}

export const demoProducts: DemoProduct[] = [
  {
    title: 'Designing Data-Intensive Applications',
    price: 129,
    rate: 9.6,
    description:
      'How replication, partitioning, transactions and stream processing really behave, and what each choice costs. A map of the trade-offs behind every database and message broker you will ever pick.',
    specifications: [
      ['Author', 'Martin Kleppmann'],
      ['Publisher', "O'Reilly Media"],
      ['Published', '2017'],
      ['Pages', '616'],
      ['Binding', 'Paperback'],
    ],
    stock: 800,
  },
  {
    title: 'Domain-Driven Design',
    price: 99,
    rate: 8.9,
    description:
      'Bounded contexts, aggregates and a language shared by developers and domain experts: the book that taught a generation where to draw the lines between services.',
    specifications: [
      ['Author', 'Eric Evans'],
      ['Publisher', 'Addison-Wesley'],
      ['Published', '2003'],
      ['Pages', '560'],
      ['Binding', 'Hardcover'],
    ],
    stock: 500,
  },
  {
    title: 'Release It! (2nd edition)',
    price: 79,
    rate: 9.0,
    description:
      'Timeouts, circuit breakers, bulkheads and the failure stories that made them necessary. Written for the people who get paged when production misbehaves.',
    specifications: [
      ['Author', 'Michael T. Nygard'],
      ['Publisher', 'Pragmatic Bookshelf'],
      ['Published', '2018'],
      ['Pages', '376'],
      ['Binding', 'Paperback'],
    ],
    stock: 600,
  },
  {
    title: 'Building Microservices (2nd edition)',
    price: 109,
    rate: 8.8,
    description:
      'When to split a system, how to split it, and how to live with the result: deployment, testing, observability and the organisation around independent services.',
    specifications: [
      ['Author', 'Sam Newman'],
      ['Publisher', "O'Reilly Media"],
      ['Published', '2021'],
      ['Pages', '612'],
      ['Binding', 'Paperback'],
    ],
    stock: 700,
  },
  {
    title: 'Site Reliability Engineering',
    price: 119,
    rate: 8.7,
    description:
      'Error budgets, toil, on-call and postmortems without blame: how one very large operator runs production, told by the engineers who do it.',
    specifications: [
      ['Editors', 'Betsy Beyer, Chris Jones, Jennifer Petoff, Niall Richard Murphy'],
      ['Publisher', "O'Reilly Media"],
      ['Published', '2016'],
      ['Pages', '552'],
      ['Binding', 'Paperback'],
    ],
    stock: 400,
  },
  {
    title: 'Patterns of Enterprise Application Architecture',
    price: 89,
    rate: 8.6,
    description:
      'Layering, domain logic, object-relational mapping and concurrency in business applications, catalogued as patterns with the forces that favour each one.',
    specifications: [
      ['Author', 'Martin Fowler'],
      ['Publisher', 'Addison-Wesley'],
      ['Published', '2002'],
      ['Binding', 'Hardcover'],
    ],
    stock: 300,
  },
  {
    title: 'The Mythical Man-Month (Anniversary edition)',
    price: 59,
    rate: 9.1,
    description:
      'Why adding people to a late project makes it later, and other essays on software projects that have stayed true for half a century.',
    specifications: [
      ['Author', 'Frederick P. Brooks, Jr.'],
      ['Publisher', 'Addison-Wesley'],
      ['Published', '1995'],
      ['Pages', '336'],
      ['Binding', 'Paperback'],
    ],
    stock: 1000,
  },
  {
    title: 'Structure and Interpretation of Computer Programs (2nd edition)',
    price: 69,
    rate: 9.4,
    description:
      'Programs as a way of thinking: abstraction with procedures and data, state, streams and the evaluators that give a language its meaning.',
    specifications: [
      ['Authors', 'Harold Abelson, Gerald Jay Sussman, Julie Sussman'],
      ['Publisher', 'The MIT Press'],
      ['Published', '1996'],
      ['Pages', '657'],
      ['Binding', 'Paperback'],
    ],
    stock: 200,
  },
];

/** Banners on the front page, each leading to one product (by its position above, from 1). */
export const demoAdvertisements: { image: string; productId: number }[] = [
  { image: '/images/ad-1.svg', productId: 1 },
  { image: '/images/ad-2.svg', productId: 3 },
  { image: '/images/ad-3.svg', productId: 8 },
];
