import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ExtentMap } from '../../src/agent/io/extent-map.js';
import { prng } from '../support/unit.js';



interface Cell {
  value: number;
  /** where this byte lies in the value's own address space */
  at: number;
}

/** The reference: one cell per byte. */
class Model {
  readonly cells: (Cell | undefined)[];
  constructor(readonly size: number) {
    this.cells = new Array<Cell | undefined>(size).fill(undefined);
  }
  set(start: number, end: number, value: number, base: number): void {
    for (let x = start; x < end; x++) this.cells[x] = { value, at: base + (x - start) };
  }
  fillGaps(start: number, end: number, value: number, base: number): void {
    for (let x = start; x < end; x++) if (!this.cells[x]) this.cells[x] = { value, at: base + (x - start) };
  }
  gaps(start: number, end: number): { start: number; end: number }[] {
    const out: { start: number; end: number }[] = [];
    for (let x = start; x < end; x++) {
      if (this.cells[x]) continue;
      const last = out.at(-1);
      if (last && last.end === x) last.end = x + 1;
      else out.push({ start: x, end: x + 1 });
    }
    return out;
  }
  covered(): number {
    return this.cells.filter((c) => c !== undefined).length;
  }
}

function checkInvariants(m: ExtentMap<number>, model: Model, where: string): void {
  const items = m.entries();
  let prevEnd = -1;
  for (const e of items) {
    assert.ok(e.start < e.end, `${where}: empty extent ${JSON.stringify(e)}`);
    assert.ok(e.start >= prevEnd, `${where}: extents overlap or are out of order at ${e.start}`);
    prevEnd = e.end;
  }
  assert.equal(m.size, items.length);
  assert.equal(m.coveredBytes(), model.covered(), `${where}: covered bytes`);
  // every byte the map holds agrees with the model, and every mapped model byte is held
  const seen = new Array<boolean>(model.size).fill(false);
  for (const e of items) {
    for (let x = e.start; x < e.end; x++) {
      const c = model.cells[x];
      assert.ok(c, `${where}: byte ${x} mapped but the model has nothing`);
      assert.equal(e.value, c.value, `${where}: value of byte ${x}`);
      assert.equal(e.base + (x - e.start), c.at, `${where}: offset of byte ${x}`);
      seen[x] = true;
    }
  }
  for (let x = 0; x < model.size; x++) if (model.cells[x]) assert.ok(seen[x], `${where}: byte ${x} lost`);
}

function checkResolve(m: ExtentMap<number>, model: Model, start: number, end: number, where: string): void {
  const pieces = m.resolve(start, end);
  let pos = start;
  for (const p of pieces) {
    assert.equal(p.start, pos, `${where}: resolve pieces not contiguous`);
    assert.ok(p.end > p.start, `${where}: empty piece`);
    for (let x = p.start; x < p.end; x++) {
      const c = model.cells[x];
      if (p.value === undefined) {
        assert.equal(c, undefined, `${where}: byte ${x} resolved unmapped but is mapped`);
      } else {
        assert.ok(c, `${where}: byte ${x} resolved mapped but is unmapped`);
        assert.equal(p.value, c.value, `${where}: value of byte ${x}`);
        assert.equal(p.offset + (x - p.start), c.at, `${where}: offset of byte ${x}`);
      }
    }
    if (p.value === undefined) assert.equal(p.offset, p.start, `${where}: unmapped piece offset`);
    pos = p.end;
  }
  assert.equal(pos, end, `${where}: resolve does not cover the range`);
  if (start === end) assert.deepEqual(pieces, []);
}

test('set overrides and splits neighbours, keeping offsets', () => {
  const m = new ExtentMap<string>();
  m.set(0, 100, 'a', 1000);
  m.set(40, 60, 'b', 5000);
  assert.deepEqual(m.entries(), [
    { start: 0, end: 40, value: 'a', base: 1000 },
    { start: 40, end: 60, value: 'b', base: 5000 },
    { start: 60, end: 100, value: 'a', base: 1060 },
  ]);
  // cover the middle and cut into both neighbours
  m.set(30, 70, 'c', 0);
  assert.deepEqual(m.entries(), [
    { start: 0, end: 30, value: 'a', base: 1000 },
    { start: 30, end: 70, value: 'c', base: 0 },
    { start: 70, end: 100, value: 'a', base: 1070 },
  ]);
  // cover exactly one extent and touch the next without overlapping it
  m.set(0, 30, 'd', 7);
  assert.deepEqual(m.entries()[0], { start: 0, end: 30, value: 'd', base: 7 });
  assert.equal(m.size, 3);
  // swallow everything
  m.set(0, 200, 'e', 9);
  assert.deepEqual(m.entries(), [{ start: 0, end: 200, value: 'e', base: 9 }]);
  // empty and inverted ranges change nothing
  m.set(10, 10, 'x', 0);
  m.set(20, 5, 'x', 0);
  assert.deepEqual(m.entries(), [{ start: 0, end: 200, value: 'e', base: 9 }]);
  assert.equal(m.coveredBytes(), 200);
});

test('fillGaps covers only uncovered bytes and gaps lists them', () => {
  const m = new ExtentMap<string>();
  m.set(10, 20, 'a', 0);
  m.set(30, 40, 'b', 100);
  assert.deepEqual(m.gaps(0, 50), [
    { start: 0, end: 10 },
    { start: 20, end: 30 },
    { start: 40, end: 50 },
  ]);
  assert.deepEqual(m.gaps(12, 18), []);
  assert.deepEqual(m.gaps(15, 35), [{ start: 20, end: 30 }]);
  m.fillGaps(5, 45, 'z', 500);
  assert.deepEqual(m.entries(), [
    { start: 5, end: 10, value: 'z', base: 500 },
    { start: 10, end: 20, value: 'a', base: 0 },
    { start: 20, end: 30, value: 'z', base: 515 },
    { start: 30, end: 40, value: 'b', base: 100 },
    { start: 40, end: 45, value: 'z', base: 535 },
  ]);
  assert.deepEqual(m.gaps(0, 50), [
    { start: 0, end: 5 },
    { start: 45, end: 50 },
  ]);
});

test('resolve returns mapped and unmapped pieces with offsets inside values', () => {
  const m = new ExtentMap<string>();
  m.set(100, 200, 'a', 4096);
  m.set(300, 400, 'b', 0);
  assert.deepEqual(m.resolve(150, 350), [
    { start: 150, end: 200, value: 'a', offset: 4146 },
    { start: 200, end: 300, value: undefined, offset: 200 },
    { start: 300, end: 350, value: 'b', offset: 0 },
  ]);
  assert.deepEqual(m.resolve(0, 50), [{ start: 0, end: 50, value: undefined, offset: 0 }]);
  assert.deepEqual(m.resolve(120, 130), [{ start: 120, end: 130, value: 'a', offset: 4116 }]);
  assert.deepEqual(m.resolve(390, 450), [
    { start: 390, end: 400, value: 'b', offset: 90 },
    { start: 400, end: 450, value: undefined, offset: 400 },
  ]);
  assert.deepEqual(m.resolve(200, 300), [{ start: 200, end: 300, value: undefined, offset: 200 }]);
});

for (const seed of [1, 2, 3, 0xc0ffee]) {
  test(`random set/fillGaps/gaps/resolve agree with a byte model (seed ${seed})`, () => {
    const rnd = prng(seed);
    const SIZE = 2048;
    const m = new ExtentMap<number>();
    const model = new Model(SIZE);
    const range = (maxLen: number) => {
      const start = Math.floor(rnd() * SIZE);
      const len = Math.floor(rnd() * Math.min(maxLen, SIZE - start + 1));
      return { start, end: start + len };
    };
    for (let op = 0; op < 3000; op++) {
      const r = rnd();
      const { start, end } = range(rnd() < 0.8 ? 64 : 600);
      const where = `seed ${seed} op ${op}`;
      if (r < 0.45) {
        const value = Math.floor(rnd() * 8);
        const base = Math.floor(rnd() * 1e6);
        m.set(start, end, value, base);
        model.set(start, end, value, base);
      } else if (r < 0.7) {
        const value = 100 + Math.floor(rnd() * 8);
        const base = Math.floor(rnd() * 1e6);
        m.fillGaps(start, end, value, base);
        model.fillGaps(start, end, value, base);
      } else if (r < 0.85) {
        assert.deepEqual(m.gaps(start, end), model.gaps(start, end), `${where}: gaps(${start}, ${end})`);
      } else {
        checkResolve(m, model, start, end, `${where}: resolve(${start}, ${end})`);
      }
      if (op % 100 === 0) checkInvariants(m, model, where);
    }
    checkInvariants(m, model, `seed ${seed} end`);
    checkResolve(m, model, 0, SIZE, `seed ${seed} end`);
  });
}
