export function Items() {
  return <h1>Protected items</h1>;
}
export function ItemPage({ id }: { id: string }) {
  return <h1>Protected item {id}</h1>;
}
