export function Infrastructure({ tab }: { tab?: string | undefined }) {
  return <h1>Infrastructure {tab}</h1>;
}
