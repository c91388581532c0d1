/**
 * API roles and what each may do. A route names the permission it needs; a token's role
 * grants a set of them: Reader reads; Operator also runs operations (failovers, jobs'
 * cancel and resume) but cannot change configuration; Contributor also configures;
 * Owner also manages tokens and registration keys.
 */
export const Role = { Owner: 'Owner', Contributor: 'Contributor', Operator: 'Operator', Reader: 'Reader' } as const;
export type Role = (typeof Role)[keyof typeof Role];
export const ROLES: readonly Role[] = Object.values(Role);

export const Permission = { Read: 'read', Operate: 'operate', Configure: 'configure', Admin: 'admin' } as const;
export type Permission = (typeof Permission)[keyof typeof Permission];

const GRANTS: Record<Role, readonly Permission[]> = {
  Owner: ['read', 'operate', 'configure', 'admin'],
  Contributor: ['read', 'operate', 'configure'],
  Operator: ['read', 'operate'],
  Reader: ['read'],
};

export function allows(role: Role, p: Permission): boolean {
  return GRANTS[role].includes(p);
}

export function isRole(s: string): s is Role {
  return (ROLES as readonly string[]).includes(s);
}
