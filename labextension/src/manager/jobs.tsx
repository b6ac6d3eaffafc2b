/**
 * "Jobs": the list of pulls, conversions and quantizations. It owns how a `Job` is shown: its
 * head line and Cancel button, its progress bar, the summary line under the bar (percent, amount
 * in the job's unit, message, stored name) and its error with details on demand.
 */
import * as React from 'react';

import type { Job } from '../wire';
import { DisclosureLink, Section, SectionProps } from './layout';
import { formatAmount, jobFraction } from './logic';

/** The line under a job's bar: percent, amount in the job's unit, the server's message, where it was stored. */
function jobSummary(job: Job, fraction: number | null): string {
  const parts: string[] = [];
  if (fraction !== null && job.state === 'running') {
    parts.push(`${Math.round(fraction * 100)}%`);
  }
  const amount = formatAmount(job.done, job.total, job.unit);
  if (amount) {
    parts.push(amount);
  }
  if (job.message) {
    parts.push(job.message);
  }
  if (job.state === 'done' && job.stored_name) {
    parts.push(`stored as ${job.stored_name}`);
  }
  return parts.join(' · ');
}

function JobRow({ job, model, state }: { job: Job } & SectionProps): JSX.Element {
  const fraction = jobFraction(job);
  const [open, setOpen] = React.useState(false);
  const label = `${job.kind} ${job.model}`;
  return (
    <li
      className={`llamalab-Manager-job llamalab-mod-${job.state}`}
      data-testid="llamalab-job"
      data-kind={job.kind}
      data-state={job.state}
      data-job-id={job.id}
    >
      <div className="llamalab-Manager-jobHead">
        <span className="llamalab-Manager-jobKind">{job.kind}</span>
        <span className="llamalab-Manager-jobModel">{job.model}</span>
        <span className="llamalab-Manager-jobState">{job.state === 'running' ? job.stage || 'running' : job.state}</span>
        {job.state === 'running' && (
          <button
            className="llamalab-Manager-button"
            data-testid="llamalab-job-cancel"
            aria-label={`Cancel the ${label}`}
            disabled={state.busy.has(`cancel:${job.id}`)}
            onClick={() => void model.cancelJob(job.id)}
          >
            Cancel
          </button>
        )}
      </div>
      {fraction === null ? (
        <progress aria-label={`Progress of the ${label}`} />
      ) : (
        <progress aria-label={`Progress of the ${label}`} max={1} value={fraction} />
      )}
      <div className="llamalab-Manager-note">
        {jobSummary(job, fraction)}
      </div>
      {job.error && (
        <div className="llamalab-Manager-jobError" role="status">
          {job.error.message}
          {job.error.detail !== null && job.error.detail !== undefined && (
            <>
              {' '}
              <DisclosureLink open={open} onToggle={() => setOpen(!open)} />
              {open && (
                <pre className="llamalab-Manager-detail">
                  {typeof job.error.detail === 'string' ? job.error.detail : JSON.stringify(job.error.detail, null, 2)}
                </pre>
              )}
            </>
          )}
        </div>
      )}
    </li>
  );
}

export function JobsSection({ model, state }: SectionProps): JSX.Element {
  return (
    <Section id="llamalab-manager-jobs" title="Jobs">
      {state.jobs.length === 0 ? (
        <p className="llamalab-Manager-empty">No pulls, conversions or quantizations yet.</p>
      ) : (
        <ul className="llamalab-Manager-jobs" aria-live="polite">
          {state.jobs.map(job => (
            <JobRow key={job.id} job={job} model={model} state={state} />
          ))}
        </ul>
      )}
    </Section>
  );
}
