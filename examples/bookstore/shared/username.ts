/**
 * Usernames are compared the way people read them, not byte by byte. A username is stored in
 * Unicode NFKC form (so a full-width 'ｉｃｙ' is 'icy'); two usernames are the same name when
 * their keys are equal, and the key is a confusable "skeleton": NFKC, case folded, without
 * combining marks, with the Cyrillic and Greek letters (and digits) that look like Latin ones
 * mapped to those. So 'ICYFENIX', 'IcyFenix' and 'іcyfenix' (Cyrillic і) all name icyfenix.
 *
 * The key is stored beside every username, under a unique index. Changing how it is made
 * means re-keying the stored rows in a migration.
 */

/** Letters and digits that look like a Latin letter, after case folding, and that letter. */
const LOOK_ALIKES: Readonly<Record<string, string>> = {
  // Cyrillic (lower case; the upper case forms fold onto these)
  а: 'a', в: 'b', г: 'r', е: 'e', з: '3', і: 'i', ј: 'j', к: 'k', м: 'm', н: 'h', о: 'o', п: 'n', р: 'p',
  с: 'c', т: 't', у: 'y', х: 'x', ѕ: 's', ь: 'b', ԁ: 'd', ԍ: 'g', һ: 'h', ӏ: 'l', ԛ: 'q', ԝ: 'w', ү: 'y',
  ѡ: 'w', ҫ: 'c',
  // Greek
  α: 'a', β: 'b', γ: 'y', ε: 'e', ζ: 'z', η: 'n', ι: 'i', κ: 'k', μ: 'm', ν: 'v', ο: 'o', ρ: 'p', τ: 't',
  υ: 'u', χ: 'x', ω: 'w', ϲ: 'c', ϳ: 'j',
  // Latin letters without their dot, and digits read as letters
  ı: 'i', ȷ: 'j', ɡ: 'g', '0': 'o', '1': 'l',
};

/** The stored form of a username: NFKC, surrounding white space removed. */
export function normaliseUsername(raw: string): string {
  return raw.normalize('NFKC').trim();
}

/** The key two usernames share when people would take them for the same name. */
export function usernameKey(username: string): string {
  const folded = normaliseUsername(username).toLowerCase().normalize('NFD').replace(/\p{Mn}/gu, '');
  let key = '';
  for (const ch of folded) key += LOOK_ALIKES[ch] ?? ch;
  return key.normalize('NFC');
}

/**
 * What is wrong with a (normalised) username, each as a message naming the field; empty when
 * nothing is. Characters nobody can see, or that change how text or paths are read, are refused.
 */
export function usernameProblems(username: string): string[] {
  const problems: string[] = [];
  if (/[\p{Cc}\p{Cs}]/u.test(username)) problems.push('username must not contain control characters');
  if (/[\p{Cf}\p{Zl}\p{Zp}]/u.test(username)) problems.push('username must not contain invisible formatting characters (zero-width, direction marks)');
  if (/[/\\]/.test(username)) problems.push('username must not contain / or \\');
  if (username.includes('..')) problems.push("username must not contain '..'");
  return problems;
}
