export function Events() {
  return <h1>Events and alerts</h1>;
}
