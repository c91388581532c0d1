export function Capacity() {
  return <h1>Capacity planner</h1>;
}
