/** The portal's frame: sign-in with an API token, the navigation, and the view the URL names. */
import { useEffect, useState, type FormEvent } from 'react';
import { api, ApiError, getToken, onSignedOut, request, setToken } from './api';
import { href, useRoute } from './router';
import type { Me } from './types';
import { ErrorBox, MeContext } from './ui';
import { Dashboard } from './views/dashboard';
import { Infrastructure } from './views/infrastructure';
import { ItemPage, Items } from './views/items';
import { PlanPage, Plans } from './views/plans';
import { JobPage, Jobs } from './views/jobs';
import { Events } from './views/events';
import { Capacity } from './views/capacity';

const NAV: [string, string][] = [
  ['dashboard', 'Dashboard'],
  ['infrastructure', 'Infrastructure'],
  ['items', 'Protected items'],
  ['plans', 'Recovery plans'],
  ['jobs', 'Jobs'],
  ['events', 'Events and alerts'],
  ['capacity', 'Capacity planner'],
];

function SignIn({ onSignedIn }: { onSignedIn: (me: Me) => void }) {
  const [token, setTokenText] = useState('');
  const [error, setError] = useState<unknown>(undefined);
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const t = token.trim();
      const me = await request<Me>('GET', '/me', undefined, undefined, t);
      setToken(t);
      onSignedIn(me);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? new ApiError(401, err.code, 'the vault does not know this token (or it was revoked): check it and try again') : err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main className="signin">
      <form onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">osr</h1>
        <p className="muted">Open Site Recovery. Sign in with an API token: the lab prints its Owner token, and <code>osr token create</code> makes others.</p>
        <label className="field">
          <span>API token</span>
          <input name="token" type="password" autoComplete="current-password" required autoFocus value={token} onChange={(e) => setTokenText(e.target.value)} />
        </label>
        <ErrorBox error={error} />
        <button type="submit" className="primary" disabled={busy || token.trim() === ''}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}

function View({ parts }: { parts: string[] }) {
  const [view, id] = parts;
  switch (view ?? 'dashboard') {
    case 'dashboard':
      return <Dashboard />;
    case 'infrastructure':
      return <Infrastructure tab={id} />;
    case 'items':
      return id ? <ItemPage id={id} /> : <Items />;
    case 'plans':
      return id ? <PlanPage id={id} /> : <Plans />;
    case 'jobs':
      return id ? <JobPage id={id} /> : <Jobs />;
    case 'events':
      return <Events />;
    case 'capacity':
      return <Capacity />;
    default:
      return (
        <p role="alert">
          There is no page <code>{parts.join('/')}</code>. <a href={href('dashboard')}>Go to the dashboard</a>.
        </p>
      );
  }
}

export function App() {
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState(getToken() !== null);
  const route = useRoute();
  useEffect(() => onSignedOut(() => {
    setToken(null);
    setMe(null);
  }), []);
  useEffect(() => {
    if (!getToken()) return;
    api
      .get<Me>('/me')
      .then(setMe, () => setToken(null))
      .finally(() => setChecking(false));
  }, []);
  if (checking) return <p className="muted">Loading…</p>;
  if (!me) return <SignIn onSignedIn={setMe} />;
  const current = route.parts[0] ?? 'dashboard';
  return (
    <MeContext.Provider value={me}>
      <a
        className="skip"
        href={href(...route.parts)}
        onClick={(e) => {
          // focus the content without changing the route in the hash
          e.preventDefault();
          document.getElementById('main')?.focus();
        }}
      >
        Skip to content
      </a>
      <header className="top">
        <a className="brand" href={href('dashboard')}>
          osr <span className="muted">{me.vault}</span>
        </a>
        <nav aria-label="Main">
          <ul>
            {NAV.map(([k, label]) => (
              <li key={k}>
                <a href={href(k)} aria-current={current === k ? 'page' : undefined}>
                  {label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div className="who">
          <span title={me.actor}>{me.role}</span>
          <button
            type="button"
            onClick={() => {
              setToken(null);
              setMe(null);
            }}
          >
            Sign out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <View parts={route.parts} />
      </main>
    </MeContext.Provider>
  );
}
