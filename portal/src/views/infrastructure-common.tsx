/** Pieces the infrastructure tabs share: the vault's validation message under the field it names, names for ids, a confirmation before a delete. */
import { useState, type ReactNode } from 'react';
import { ApiError } from '../api';
import type { Fabric, InventoryObject } from '../types';
import { Dialog } from '../ui';

/**
 * The form field an ApiError names, as the form knows it: the vault names a field of a
 * request body as `body/settings/retentionHours` (schema) or `retentionHours` and
 * `initialReplication.startAt` (the domain's rules); both become the path under the
 * settings, e.g. `retentionHours` or `initialReplication.startAt`.
 */
export function fieldOf(e: unknown): string | undefined {
  if (!(e instanceof ApiError) || !e.field) return undefined;
  const key = e.field
    .replace(/^(body|querystring|params)(?=\/|$)/, '')
    .split(/[/.]/)
    .filter((s) => s !== '' && s !== 'settings')
    .join('.');
  return key === '' ? undefined : key;
}

/** A refusal whose message already stands under its field: the dialog only points there. */
class ShownAtField extends Error {}

/**
 * The vault's message under the field it names. `refused(e)` is called with what a
 * request threw: a message for a field of the form goes under that field (and the dialog
 * stays open, pointing there); any other error is thrown on for the dialog to show.
 * `aliases` maps a field the vault names to the form's (e.g. a whole object to its first input).
 */
export function useFieldErrors(fields: readonly string[], aliases: Record<string, string> = {}) {
  const [errors, setErrors] = useState<Record<string, string>>({});
  const refused = (e: unknown): never => {
    const named = fieldOf(e);
    const key = named === undefined ? undefined : (aliases[named] ?? named);
    if (key !== undefined && fields.includes(key) && e instanceof ApiError) {
      setErrors({ [key]: e.message });
      throw new ShownAtField(`The vault refused this (${e.code}): its reason is under the field it names.`);
    }
    setErrors({});
    throw e;
  };
  return { errors, clear: () => setErrors({}), refused };
}

/** id → name, for showing names instead of ids */
export function names<T extends { id: string; name: string }>(xs: T[]): Map<string, string> {
  return new Map(xs.map((x) => [x.id, x.name]));
}

/** an inventory object's name with its fabric's, e.g. "Cloud1 (VMM-NewYork)"; an id the inventory no longer has shows as the id */
export function objectLabel(id: string, objects: Map<string, InventoryObject>, fabrics: Map<string, Fabric>): string {
  const o = objects.get(id);
  if (!o) return id;
  const f = fabrics.get(o.fabricId);
  return `${o.name} (${f?.name ?? o.fabricId})`;
}

export function byId<T extends { id: string }>(xs: T[]): Map<string, T> {
  return new Map(xs.map((x) => [x.id, x]));
}

/** A confirmation before something is deleted; the vault's refusal (e.g. still in use) shows in it. */
export function ConfirmDelete({ title, open, onClose, onConfirm, children }: { title: string; open: boolean; onClose: () => void; onConfirm: () => Promise<void>; children: ReactNode }) {
  return (
    <Dialog title={title} open={open} onClose={onClose} onSubmit={onConfirm} submitLabel="Delete" danger>
      {children}
    </Dialog>
  );
}

/** `<option>`s of inventory objects, each with its fabric's name */
export function ObjectOptions({ objects, fabrics, placeholder }: { objects: InventoryObject[]; fabrics: Map<string, Fabric>; placeholder: string }) {
  const sorted = [...objects].sort((a, b) => (fabrics.get(a.fabricId)?.name ?? a.fabricId).localeCompare(fabrics.get(b.fabricId)?.name ?? b.fabricId) || a.name.localeCompare(b.name));
  return (
    <>
      <option value="">{placeholder}</option>
      {sorted.map((o) => (
        <option key={o.id} value={o.id}>
          {o.name} ({fabrics.get(o.fabricId)?.name ?? o.fabricId})
        </option>
      ))}
    </>
  );
}
