package canary

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// A canary's driver holds a coordination.k8s.io Lease named as its record:
// whoever drives renews it, and a driver that stops (a laptop that sleeps,
// a CLI killed, a pod evicted) loses it after its duration, to whoever
// waits: another terminal's `resume`, or the standby driver in the cluster.

// driverAnnotation holds the holder as a Driver, for status and for
// telling a driver's own lease from another's.
const driverAnnotation = "tunnel.dev/canary-driver"

// Leases reads and writes canaries' leases in a namespace.
type Leases struct {
	CS        kubernetes.Interface
	Namespace string
}

// LeaseDuration is how long a driver that stopped renewing holds a canary:
// within a step's interval where it can be, so the standby takes over
// before the next analysis is due, and long enough for a few renewals.
func LeaseDuration(interval time.Duration) time.Duration {
	return min(max(interval*2/3, 6*time.Second), LeaseTTL)
}

// A holder renews every RenewEvery and stops acting RenewDeadline after
// it last sent a renewal that succeeded: before anyone else may take the
// lease, a full duration after they last saw it change.
func RenewEvery(ttl time.Duration) time.Duration    { return ttl / 6 }
func RenewDeadline(ttl time.Duration) time.Duration { return ttl / 2 }

// Observed is what a waiting driver last saw of a lease, on its own
// clock: a lease is free when it has not changed for its duration since,
// whatever the holder's clock says (as client-go's leader election does).
type Observed struct {
	version string
	at      time.Time
}

// Holder is who holds the canary's lease, with Renewed its last renewal
// and Since when it took it; nil when nobody holds it or there is none.
func (l Leases) Holder(ctx context.Context, service string) (*Driver, error) {
	lease, err := l.CS.CoordinationV1().Leases(l.Namespace).Get(ctx, configMapName(service), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the canary's lease: %w", err)
	}
	return holder(lease), nil
}

func holder(lease *coordv1.Lease) *Driver {
	var d Driver
	if json.Unmarshal([]byte(lease.Annotations[driverAnnotation]), &d) != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		return nil
	}
	if lease.Spec.RenewTime != nil {
		d.Renewed = lease.Spec.RenewTime.Time
	}
	if lease.Spec.AcquireTime != nil {
		d.Since = lease.Spec.AcquireTime.Time
	}
	if lease.Spec.LeaseDurationSeconds != nil {
		d.TTL = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
	}
	return &d
}

// Acquire takes the lease for me, creating it when missing; ErrDriven
// when another driver still holds it. obs remembers, between calls, when
// the lease last changed.
func (l Leases) Acquire(ctx context.Context, service string, me *Driver, ttl time.Duration, obs *Observed) error {
	leases := l.CS.CoordinationV1().Leases(l.Namespace)
	host, _ := os.Hostname()
	for {
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, configMapName(service), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			lease = &coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: configMapName(service), Namespace: l.Namespace,
				Labels: map[string]string{Label: service}}}
			l.hold(lease, me, now, ttl, true)
			_, err = leases.Create(ctx, lease, metav1.CreateOptions{FieldManager: FieldManager})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("create the canary's lease: %w", err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the canary's lease: %w", err)
		}
		cur := holder(lease)
		if lease.ResourceVersion != obs.version || obs.at.IsZero() {
			obs.version, obs.at = lease.ResourceVersion, time.Now()
		}
		if cur != nil && !cur.same(me) && !(cur.Host == host && cur.PID > 0 && !alive(cur.PID)) && time.Since(obs.at) < max(cur.TTL, ttl) {
			return &ErrDriven{By: cur}
		}
		l.hold(lease, me, now, ttl, !cur.same(me))
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{FieldManager: FieldManager})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("take the canary's lease: %w", err)
		}
		return nil
	}
}

func (l Leases) hold(lease *coordv1.Lease, me *Driver, now metav1.MicroTime, ttl time.Duration, taken bool) {
	data, _ := json.Marshal(me)
	if lease.Annotations == nil {
		lease.Annotations = map[string]string{}
	}
	lease.Annotations[driverAnnotation] = string(data)
	id, secs := me.String(), int32(ttl/time.Second)
	lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds, lease.Spec.RenewTime = &id, &secs, &now
	if taken {
		lease.Spec.AcquireTime = &now
		n := int32(1)
		if lease.Spec.LeaseTransitions != nil {
			n = *lease.Spec.LeaseTransitions + 1
		}
		lease.Spec.LeaseTransitions = &n
	}
}

// Renew renews my hold; ErrTakenOver when another driver holds the lease.
func (l Leases) Renew(ctx context.Context, service string, me *Driver) error {
	leases := l.CS.CoordinationV1().Leases(l.Namespace)
	for {
		lease, err := leases.Get(ctx, configMapName(service), metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read the canary's lease: %w", err)
		}
		if cur := holder(lease); !cur.same(me) {
			return fmt.Errorf("the canary of %s %w by %s", service, ErrTakenOver, cur)
		}
		now := metav1.NewMicroTime(time.Now())
		lease.Spec.RenewTime = &now
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{FieldManager: FieldManager})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("renew the canary's lease: %w", err)
		}
		return nil
	}
}

// Release lets the lease go at once, when I hold it, for whoever waits.
func (l Leases) Release(ctx context.Context, service string, me *Driver) error {
	leases := l.CS.CoordinationV1().Leases(l.Namespace)
	for {
		lease, err := leases.Get(ctx, configMapName(service), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !holder(lease).same(me) {
			return nil
		}
		empty := ""
		lease.Spec.HolderIdentity, lease.Spec.RenewTime = &empty, nil
		delete(lease.Annotations, driverAnnotation)
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{FieldManager: FieldManager})
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}
