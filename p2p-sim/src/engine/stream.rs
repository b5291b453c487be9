//! Stream handles: what a writer and a reader of one flow do to the model
//! (writes limited by the window's credit, reads that return credit one
//! path latency later, half-close, dropping either half), and freeing a
//! flow once both halves are gone.

use std::task::{Context, Poll};

use p2p_core::Error;

use super::state::{Event, FlowId, Handle, State};

fn closed_io(reason: &str) -> std::io::Error {
    Error::closed(reason.to_string()).into_io()
}

impl State {
    pub(crate) fn poll_write(
        &mut self,
        fid: FlowId,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let Some(f) = self.flows.get_mut(&fid) else {
            return Poll::Ready(Err(closed_io("connection closed")));
        };
        if let Some(r) = &f.writer_error {
            return Poll::Ready(Err(closed_io(r)));
        }
        if f.fin_queued {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "write after the stream was finished",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if f.credit == 0 {
            f.writer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(f.credit);
        f.send_buf.extend_from_slice(&buf[..n]);
        f.credit -= n;
        self.enqueue(fid);
        Poll::Ready(Ok(n))
    }

    pub(crate) fn shutdown(&mut self, fid: FlowId) -> std::io::Result<()> {
        let Some(f) = self.flows.get_mut(&fid) else {
            return Err(closed_io("connection closed"));
        };
        if let Some(r) = &f.writer_error {
            return Err(closed_io(r));
        }
        if !f.fin_queued {
            f.fin_queued = true;
            self.enqueue(fid);
        }
        Ok(())
    }

    pub(crate) fn writer_dropped(&mut self, fid: FlowId) {
        let Some(f) = self.flows.get_mut(&fid) else {
            return;
        };
        f.writer = Handle::Gone;
        f.writer_waker = None;
        if !f.fin_queued && f.writer_error.is_none() {
            // Dropping a send half finishes it.
            f.fin_queued = true;
            self.enqueue(fid);
        }
        self.maybe_gc_flow(fid);
    }

    pub(crate) fn poll_read(
        &mut self,
        fid: FlowId,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let window = self.cfg.window;
        let Some(f) = self.flows.get_mut(&fid) else {
            return Poll::Ready(Err(closed_io("connection closed")));
        };
        if let Some(r) = &f.reader_error {
            return Poll::Ready(Err(closed_io(r)));
        }
        if f.recv_buf.is_empty() {
            if f.fin_received {
                return Poll::Ready(Ok(()));
            }
            f.reader_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut copied = 0;
        while buf.remaining() > 0 {
            let Some(front) = f.recv_buf.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            copied += n;
            if n == front.len() {
                f.recv_buf.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        f.consumed_unacked += copied;
        if f.consumed_unacked >= window / 4 || f.recv_buf.is_empty() {
            let (bytes, src, dst) = (std::mem::take(&mut f.consumed_unacked), f.src, f.dst);
            let at = self.now + self.path_delay(dst, src, fid);
            self.schedule(at, Event::Credit { flow: fid, bytes });
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn reader_dropped(&mut self, fid: FlowId) {
        let Some(f) = self.flows.get_mut(&fid) else {
            return;
        };
        f.reader = Handle::Gone;
        f.reader_waker = None;
        let bytes: usize =
            f.recv_buf.drain(..).map(|b| b.len()).sum::<usize>() + f.consumed_unacked;
        f.consumed_unacked = 0;
        if bytes > 0 && f.writer_error.is_none() {
            let (src, dst) = (f.src, f.dst);
            let at = self.now + self.path_delay(dst, src, fid);
            self.schedule(at, Event::Credit { flow: fid, bytes });
        }
        self.maybe_gc_flow(fid);
    }

    pub(super) fn maybe_gc_flow(&mut self, fid: FlowId) {
        let Some(f) = self.flows.get(&fid) else {
            return;
        };
        let finished = f.fin_received || f.writer_error.is_some() || f.reader_error.is_some();
        let relaying = f.in_relay_up_ring || f.in_relay_down_ring;
        if f.writer == Handle::Gone
            && f.reader == Handle::Gone
            && finished
            && !f.in_up_ring
            && !relaying
        {
            let c = f.conn;
            self.flows.remove(&fid);
            if let Some(conn) = self.conns.get_mut(&c) {
                conn.flows.retain(|x| *x != fid);
            }
        }
    }
}
