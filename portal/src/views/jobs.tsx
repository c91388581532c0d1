export function Jobs() {
  return <h1>Jobs</h1>;
}
export function JobPage({ id }: { id: string }) {
  return <h1>Job {id}</h1>;
}
