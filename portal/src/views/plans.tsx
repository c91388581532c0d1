export function Plans() {
  return <h1>Recovery plans</h1>;
}
export function PlanPage({ id }: { id: string }) {
  return <h1>Recovery plan {id}</h1>;
}
