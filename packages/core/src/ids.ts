// Machine ids and Docker-style generated names. Randomness is passed in, so this stays pure.

const ADJECTIVES = [
  "brave",
  "calm",
  "eager",
  "fancy",
  "gentle",
  "happy",
  "jolly",
  "keen",
  "lucid",
  "merry",
  "nimble",
  "proud",
  "quick",
  "quiet",
  "sharp",
  "swift",
  "tidy",
  "vivid",
  "witty",
  "zesty",
];
const NOUNS = [
  "otter",
  "falcon",
  "badger",
  "heron",
  "lynx",
  "marten",
  "osprey",
  "panda",
  "quokka",
  "raven",
  "salmon",
  "tapir",
  "urchin",
  "vole",
  "walrus",
  "yak",
  "zebra",
  "gecko",
  "ibis",
  "koala",
];

/** 12 lowercase hex characters from 6 random bytes. */
export function machineId(random: Uint8Array): string {
  if (random.length < 6) throw new RangeError("machineId needs 6 random bytes");
  return Array.from(random.subarray(0, 6), (b) => b.toString(16).padStart(2, "0")).join("");
}

export function generatedName(random: Uint8Array): string {
  if (random.length < 3) throw new RangeError("generatedName needs 3 random bytes");
  const a = ADJECTIVES[(random[0] as number) % ADJECTIVES.length] as string;
  const n = NOUNS[(random[1] as number) % NOUNS.length] as string;
  return `${a}_${n}_${(random[2] as number).toString(16).padStart(2, "0")}`;
}
